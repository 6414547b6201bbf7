//! A shard's group coordinator: the groups whose `__consumer_offsets` partition this shard owns
//! and this broker leads, their timers, and their committed offsets, made durable in that
//! partition (on every in-sync replica of it) before a commit is acknowledged.
//!
//! The coordinator follows the partition's leadership, as Kafka's `GroupMetadataManager` does:
//! when its broker comes to lead a partition it replays the partition's log (answering the
//! partition's groups COORDINATOR_LOAD_IN_PROGRESS meanwhile), and when the leadership goes it
//! forgets the partition's groups (NOT_COORDINATOR: the clients find the new leader, which has
//! replayed the same log). Group membership is not kept in the log, only committed offsets:
//! members rejoin a moved coordinator, and find their group's offsets there.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::error::ErrorKind;
use crate::group::consumer_protocol;
use crate::group::offsets::{self, Committed, DecodeError, OffsetRecord, OFFSETS_TOPIC};
use crate::group::state::{
    Action, Event, Group, GroupDescription, GroupState, HeartbeatCall, JoinCall, JoinReply,
    JoinRequest, LeaveCall, MemberAnswer, MemberRequest, SyncCall, SyncReply, Ticket,
};
use crate::metrics::stats::GroupStats;
use crate::partition::{Acks, Partition};
use crate::record::archive;
use crate::record::batch::NativeBatchView;
use crate::record::entry::{entries, Check, StoredEntry};
use crate::record::{BatchBuilder, PayloadFormat, PendingEntry};
use crate::types::{LeaderEpoch, Offset, PartitionId};

/// How often expired sessions and rebalance deadlines are checked.
pub const TICK: Duration = Duration::from_millis(100);
/// How often offsets of empty groups are checked against `offsets.retention.minutes`.
const RETENTION_CHECK: Duration = Duration::from_secs(60);
/// How often `__consumer_offsets` partitions are checked for compaction.
pub const COMPACTION_CHECK: Duration = Duration::from_secs(5);
/// A partition is compacted once it has this many sealed segments.
const COMPACT_AFTER_SEALED: usize = 2;
/// Bytes read at a time when replaying the offsets log.
const REPLAY_READ_BYTES: usize = 8 * 1024 * 1024;
/// How often a replay waiting for the log's appends to be written looks again.
const WRITTEN_RECHECK: Duration = Duration::from_millis(100);
/// How long a replay that failed (a read error) waits before it tries again.
const REPLAY_RETRY: Duration = Duration::from_secs(1);

/// One committed offset in a commit request.
#[derive(Clone, Debug)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// -1 when the client sent none.
    pub leader_epoch: i32,
    pub metadata: String,
}

/// What a coordinator needs of its shard: the `__consumer_offsets` partitions the shard owns and
/// its broker leads. The shard implements it; the coordinator sees nothing else of the shard, so
/// groups sit below the shard layer and can be driven by a test without one.
pub trait OffsetsLogs {
    /// `__consumer_offsets` partition `partition`, which this shard owns, when this broker
    /// leads it (NOT_COORDINATOR otherwise).
    fn led(&self, partition: PartitionId) -> Result<Rc<Partition>, BrokerError>;
}

/// Where the coordinator stands with one `__consumer_offsets` partition its broker leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// Replaying the partition's log, as `load` (a number no other replay has): its groups
    /// are answered COORDINATOR_LOAD_IN_PROGRESS.
    Loading { epoch: LeaderEpoch, load: u64 },
    /// Replayed: the partition's groups are served.
    Loaded { epoch: LeaderEpoch },
}

impl Hold {
    fn epoch(self) -> LeaderEpoch {
        match self {
            Hold::Loading { epoch, .. } | Hold::Loaded { epoch } => epoch,
        }
    }
}

/// A replay to run: `__consumer_offsets` partition `partition`, led in `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub partition: PartitionId,
    pub epoch: LeaderEpoch,
    load: u64,
}

/// The protocol type of Kafka's consumers, whose subscriptions the coordinator can read.
const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

typed_requests! {
    /// A group operation, sent to the group's coordinator shard, and what it answers.
    trait GroupRequest, call GroupCall, answer GroupAnswer;

    JoinGroup { group: String, request: JoinRequest } -> JoinReply;

    SyncGroup {
        group: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    } -> SyncReply;

    Heartbeat {
        group: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
    } -> Result<(), ErrorKind>;

    /// Each member's result, in the order asked.
    LeaveGroup {
        group: String,
        /// (member id, instance id) pairs; an empty member id names the member by instance id.
        members: Vec<(String, Option<String>)>,
    } -> Result<Vec<Result<(), ErrorKind>>, ErrorKind>;

    CommitOffsets {
        group: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        offsets: Vec<OffsetCommit>,
    } -> Result<(), ErrorKind>;

    /// (topic, partition, committed offset if any).
    FetchOffsets {
        group: String,
        /// `None`: every committed offset of the group.
        topics: Option<Vec<(String, Vec<i32>)>>,
    } -> Vec<(String, i32, Option<Committed>)>;

    DescribeGroup { group: String } -> Option<GroupDescription>;

    /// This shard's groups only (the caller asks every shard): (group, state, protocol type).
    ListGroups {} -> Vec<(String, GroupState, String)>;

    DeleteGroup { group: String } -> Result<(), ErrorKind>;

    /// Kafka's OffsetDelete (KIP-496): the group's committed offsets of these partitions go,
    /// each refused with GROUP_SUBSCRIBED_TO_TOPIC while a member consumes its topic.
    DeleteOffsets { group: String, partitions: Vec<(String, i32)> }
        -> Result<Vec<(String, i32, Result<(), ErrorKind>)>, ErrorKind>;
}

pub struct Coordinator {
    /// The groups of the partitions held: loaded, or being loaded.
    groups: RefCell<HashMap<String, Group>>,
    /// The `__consumer_offsets` partitions this coordinator holds (its broker leads them).
    holds: RefCell<HashMap<PartitionId, Hold>>,
    next_load: Cell<u64>,
    /// Requests handed to a group and not yet answered, by the ticket they went in with, with
    /// the group's offsets partition (a partition let go drops its requests' senders).
    waiting: RefCell<HashMap<Ticket, (PartitionId, oneshot::Sender<MemberAnswer>)>>,
    next_ticket: Cell<u64>,
    initial_delay: Duration,
    session_timeout_min: Duration,
    session_timeout_max: Duration,
    offsets_retention: Duration,
    last_retention_check: Cell<Option<Instant>>,
}

impl Coordinator {
    pub fn new(config: &BrokerConfig) -> Self {
        Self {
            groups: RefCell::default(),
            holds: RefCell::default(),
            next_load: Cell::new(0),
            waiting: RefCell::default(),
            next_ticket: Cell::new(0),
            initial_delay: Duration::from_millis(config.group_initial_rebalance_delay_ms),
            session_timeout_min: Duration::from_millis(config.group_min_session_timeout_ms),
            session_timeout_max: Duration::from_millis(config.group_max_session_timeout_ms),
            offsets_retention: Duration::from_secs(config.offsets_retention_minutes * 60),
            last_retention_check: Cell::new(None),
        }
    }

    /// Answers a group operation: refused with COORDINATOR_LOAD_IN_PROGRESS while the group's
    /// offsets partition is being replayed, and NOT_COORDINATOR when this broker does not lead
    /// it.
    pub async fn handle(
        &self,
        logs: &impl OffsetsLogs,
        call: GroupCall,
    ) -> Result<GroupAnswer, ErrorKind> {
        match named_group(&call) {
            Some(group) => self.serving(group)?,
            // A listing while a partition is replayed would miss its groups (Kafka answers the
            // same).
            None if self.is_loading() => return Err(ErrorKind::CoordinatorLoadInProgress),
            None => {}
        }
        let now = Instant::now();
        Ok(match call {
            GroupCall::JoinGroup(JoinGroup { group, request }) => {
                GroupAnswer::JoinGroup(self.join(group, request, now).await)
            }
            GroupCall::SyncGroup(SyncGroup {
                group,
                member_id,
                instance_id,
                generation,
                assignments,
            }) => {
                let sync = SyncCall { member_id, instance_id, generation, assignments };
                let synced = self.ask(&group, sync, now).await;
                GroupAnswer::SyncGroup(synced.unwrap_or_else(Err))
            }
            GroupCall::Heartbeat(Heartbeat { group, member_id, instance_id, generation }) => {
                let beat = HeartbeatCall { member_id, instance_id, generation };
                let beat = self.ask(&group, beat, now).await;
                GroupAnswer::Heartbeat(beat.unwrap_or_else(Err))
            }
            GroupCall::LeaveGroup(LeaveGroup { group, members }) => {
                GroupAnswer::LeaveGroup(self.ask(&group, LeaveCall { members }, now).await)
            }
            GroupCall::CommitOffsets(CommitOffsets {
                group,
                member_id,
                instance_id,
                generation,
                offsets,
            }) => {
                let result = self
                    .commit(logs, group, &member_id, instance_id.as_deref(), generation, offsets)
                    .await;
                GroupAnswer::CommitOffsets(result)
            }
            GroupCall::FetchOffsets(FetchOffsets { group, topics }) => {
                GroupAnswer::FetchOffsets(self.fetch_offsets(&group, topics))
            }
            GroupCall::DescribeGroup(DescribeGroup { group }) => {
                GroupAnswer::DescribeGroup(self.groups.borrow().get(&group).map(Group::describe))
            }
            GroupCall::ListGroups(ListGroups {}) => GroupAnswer::ListGroups(
                self.groups
                    .borrow()
                    .values()
                    .map(|g| (g.id.clone(), g.state, g.describe().protocol_type))
                    .collect(),
            ),
            GroupCall::DeleteGroup(DeleteGroup { group }) => {
                GroupAnswer::DeleteGroup(self.delete(logs, &group).await)
            }
            GroupCall::DeleteOffsets(DeleteOffsets { group, partitions }) => {
                GroupAnswer::DeleteOffsets(self.delete_offsets(logs, &group, partitions).await)
            }
        })
    }

    /// Whether any partition is being replayed.
    fn is_loading(&self) -> bool {
        self.holds.borrow().values().any(|hold| matches!(hold, Hold::Loading { .. }))
    }

    /// Whether `group` is served here now: its offsets partition is led by this broker and
    /// replayed.
    fn serving(&self, group: &str) -> Result<(), ErrorKind> {
        match self.holds.borrow().get(&offsets::partition_for(group)) {
            Some(Hold::Loaded { .. }) => Ok(()),
            Some(Hold::Loading { .. }) => Err(ErrorKind::CoordinatorLoadInProgress),
            None => Err(ErrorKind::NotCoordinator),
        }
    }

    /// Hands `request` to `group` and waits for its answer: UNKNOWN_MEMBER_ID when there is no
    /// such group, NOT_COORDINATOR when the group's partition was let go before the answer came.
    async fn ask<R: MemberRequest>(
        &self,
        group: &str,
        request: R,
        now: Instant,
    ) -> Result<R::Answer, ErrorKind> {
        let ticket = Ticket(self.next_ticket.get());
        self.next_ticket.set(ticket.0 + 1);
        let (reply, answer) = oneshot::channel();
        let actions = {
            let mut groups = self.groups.borrow_mut();
            let entry = groups.get_mut(group).ok_or(ErrorKind::UnknownMemberId)?;
            let partition = offsets::partition_for(group);
            self.waiting.borrow_mut().insert(ticket, (partition, reply));
            entry.step(Event::Request { ticket, call: request.into_call() }, now)
        };
        self.carry_out(group, actions);
        // A request whose connection goes away stops waiting here: its ticket leaves the table
        // then, not when the group answers it (a join may wait a whole rebalance timeout).
        let _waiting = Waiting { table: &self.waiting, ticket };
        let answer = answer.await.map_err(|_| ErrorKind::NotCoordinator)?;
        R::from_answer(answer).ok_or(ErrorKind::UnknownMemberId)
    }

    /// Does what a group's step asked: answers go to the requests waiting for them (a request
    /// whose connection went away meanwhile is not waiting any more).
    fn carry_out(&self, group: &str, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Answer { ticket, answer } => {
                    if let Some((_, waiting)) = self.waiting.borrow_mut().remove(&ticket) {
                        let _ = waiting.send(answer);
                    }
                }
                Action::Expired { member_id } => {
                    tracing::info!(group, member = %member_id, "session expired; rebalancing");
                }
            }
        }
    }

    fn new_group(&self, id: String) -> Group {
        Group::new(id, crate::now_ms(), self.initial_delay)
    }

    async fn join(&self, group: String, request: JoinRequest, now: Instant) -> JoinReply {
        let refuse = |e| Err((e, request.member_id.clone()));
        if group.is_empty() {
            return refuse(ErrorKind::InvalidGroupId);
        }
        if request.session_timeout < self.session_timeout_min
            || request.session_timeout > self.session_timeout_max
        {
            return refuse(ErrorKind::InvalidSessionTimeout);
        }
        if !self.groups.borrow().contains_key(&group) {
            let created = self.new_group(group.clone());
            self.groups.borrow_mut().insert(group.clone(), created);
        }
        let joined = self.ask(&group, JoinCall { request }, now).await;
        joined.unwrap_or_else(|e| Err((e, String::new())))
    }

    async fn commit(
        &self,
        logs: &impl OffsetsLogs,
        group: String,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        commits: Vec<OffsetCommit>,
    ) -> Result<(), ErrorKind> {
        if group.is_empty() {
            return Err(ErrorKind::InvalidGroupId);
        }
        let log = offsets_log(logs, offsets::partition_for(&group))?;
        // From here to the append nothing awaits: no tick, join or delete can change the group
        // between the check and the state the commit leaves.
        let records = self.commit_records(&group, member_id, instance_id, generation, &commits)?;
        let held = self.hold_of(&group);
        persist(&log, &group, &records, || self.apply_all(&records)).await?;
        self.still_held(&group, held)
    }

    /// How the coordinator holds `group`'s partition now.
    fn hold_of(&self, group: &str) -> Option<Hold> {
        self.holds.borrow().get(&offsets::partition_for(group)).copied()
    }

    /// A change stored while the partition was let go (and maybe taken again) is answered
    /// NOT_COORDINATOR, as Kafka answers it: its state here was dropped with the partition,
    /// and the client asks the coordinator that holds it now again.
    fn still_held(&self, group: &str, held: Option<Hold>) -> Result<(), ErrorKind> {
        match self.hold_of(group) == held {
            true => Ok(()),
            false => Err(ErrorKind::NotCoordinator),
        }
    }

    /// Checks that a commit may go ahead and returns its records. Leaves the groups as they are:
    /// a group is created by the commit's records when they are applied, as on replay.
    fn commit_records(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        commits: &[OffsetCommit],
    ) -> Result<Vec<OffsetRecord>, ErrorKind> {
        match self.groups.borrow().get(group) {
            Some(entry) => entry.check_commit(member_id, instance_id, generation)?,
            // No such group: only a commit outside membership passes.
            None => {
                let none = Group::new(group.to_string(), 0, Duration::ZERO);
                none.check_commit(member_id, instance_id, generation)?
            }
        }
        let commit_time_ms = crate::now_ms();
        Ok(commits
            .iter()
            .map(|c| OffsetRecord {
                group: group.to_string(),
                topic: c.topic.clone(),
                partition: c.partition,
                committed: Some(Committed {
                    offset: c.offset,
                    leader_epoch: c.leader_epoch,
                    metadata: c.metadata.clone(),
                    commit_time_ms,
                }),
            })
            .collect())
    }

    fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, i32, Option<Committed>)> {
        let groups = self.groups.borrow();
        let offsets = groups.get(group).map(|g| &g.offsets);
        match topics {
            Some(topics) => topics
                .into_iter()
                .flat_map(|(topic, partitions)| {
                    partitions.into_iter().map(move |p| {
                        let found = offsets.and_then(|o| o.get(&(topic.clone(), p)).cloned());
                        (topic.clone(), p, found)
                    })
                })
                .collect(),
            None => {
                let sorted: BTreeMap<_, _> = offsets.into_iter().flatten().collect();
                sorted.into_iter().map(|((t, p), c)| (t.clone(), *p, Some(c.clone()))).collect()
            }
        }
    }

    async fn delete(&self, logs: &impl OffsetsLogs, group: &str) -> Result<(), ErrorKind> {
        if !self.groups.borrow().contains_key(group) {
            return Err(ErrorKind::GroupIdNotFound);
        }
        let log = offsets_log(logs, offsets::partition_for(group))?;
        // Nothing awaits from here to the append: no member can join in between.
        let tombstones = {
            let groups = self.groups.borrow();
            let Some(entry) = groups.get(group) else { return Err(ErrorKind::GroupIdNotFound) };
            if entry.has_members() {
                return Err(ErrorKind::NonEmptyGroup);
            }
            entry
                .offsets
                .keys()
                .map(|(topic, partition)| OffsetRecord {
                    group: group.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                    committed: None,
                })
                .collect::<Vec<_>>()
        };
        let held = self.hold_of(group);
        persist(&log, group, &tombstones, || {
            self.groups.borrow_mut().remove(group);
        })
        .await?;
        self.still_held(group, held)
    }

    /// Removes the group's committed offsets of `partitions` (tombstones in its offsets log), as
    /// Kafka's OffsetDelete does: GROUP_ID_NOT_FOUND without the group; NON_EMPTY_GROUP while
    /// it has members whose subscriptions cannot be read (another protocol than Kafka's consumer
    /// one, or none chosen yet); otherwise each partition whose topic a member subscribes to is refused with
    /// GROUP_SUBSCRIBED_TO_TOPIC, and the others go (those without an offset quietly).
    async fn delete_offsets(
        &self,
        logs: &impl OffsetsLogs,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<(String, i32, Result<(), ErrorKind>)>, ErrorKind> {
        let log = offsets_log(logs, offsets::partition_for(group))?;
        // Nothing awaits from here to the append: no member can join in between.
        let (results, tombstones) = {
            let groups = self.groups.borrow();
            let Some(entry) = groups.get(group) else { return Err(ErrorKind::GroupIdNotFound) };
            let subscribed = match entry.has_members() {
                false => BTreeSet::new(),
                true => {
                    // Readable only once a consumer-protocol group has chosen its protocol
                    // (Kafka answers the same while it has not).
                    let description = entry.describe();
                    if description.protocol_type != CONSUMER_PROTOCOL_TYPE
                        || description.protocol.is_empty()
                    {
                        return Err(ErrorKind::NonEmptyGroup);
                    }
                    // A subscription that cannot be read counts as one to every topic, as in
                    // Kafka: nothing a member may consume is deleted.
                    let subscriptions: Option<Vec<Vec<String>>> = (description.members.iter())
                        .map(|member| consumer_protocol::subscribed_topics(&member.metadata))
                        .collect();
                    match subscriptions {
                        Some(topics) => topics.into_iter().flatten().collect(),
                        None => partitions.iter().map(|(topic, _)| topic.clone()).collect(),
                    }
                }
            };
            let mut results = Vec::with_capacity(partitions.len());
            let mut tombstones = Vec::new();
            for (topic, partition) in partitions {
                if subscribed.contains(&topic) {
                    results.push((topic, partition, Err(ErrorKind::GroupSubscribedToTopic)));
                    continue;
                }
                if entry.offsets.contains_key(&(topic.clone(), partition)) {
                    let (group, topic) = (group.to_string(), topic.clone());
                    tombstones.push(OffsetRecord { group, topic, partition, committed: None });
                }
                results.push((topic, partition, Ok(())));
            }
            (results, tombstones)
        };
        if tombstones.is_empty() {
            return Ok(results);
        }
        let held = self.hold_of(group);
        persist(&log, group, &tombstones, || self.apply_all(&tombstones)).await?;
        self.still_held(group, held)?;
        Ok(results)
    }

    /// The groups this coordinator serves (replays in progress left out), for `/metrics`.
    pub fn stats(&self) -> Vec<GroupStats> {
        let groups = self.groups.borrow();
        let served = groups.values().filter(|g| self.serving(&g.id).is_ok());
        served
            .map(|group| GroupStats {
                group: group.id.clone(),
                state: group.state.name(),
                members: u32::try_from(group.member_count()).unwrap_or(u32::MAX),
                offsets: (group.offsets.iter())
                    .map(|((topic, partition), c)| (topic.clone(), *partition, c.offset))
                    .collect(),
            })
            .collect()
    }

    /// Evicts silent members, completes due rebalances, forgets empty groups' offsets after
    /// `offsets.retention.minutes`, and drops groups with nothing left.
    pub fn tick(&self, now: Instant) {
        let check_retention =
            self.last_retention_check.get().is_none_or(|last| now >= last + RETENTION_CHECK);
        if check_retention {
            self.last_retention_check.set(Some(now));
        }
        let retention_ms = i64::try_from(self.offsets_retention.as_millis()).unwrap_or(i64::MAX);
        let oldest_kept = crate::now_ms().saturating_sub(retention_ms);
        let mut groups = self.groups.borrow_mut();
        for group in groups.values_mut() {
            let actions = group.step(Event::Tick, now);
            self.carry_out(&group.id, actions);
            if check_retention && group.state == GroupState::Empty {
                group.offsets.retain(|_, c| c.commit_time_ms >= oldest_kept);
            }
        }
        groups.retain(|_, g| {
            g.has_members() || !g.offsets.is_empty() || g.state != GroupState::Empty
        });
    }

    /// Follows this broker's leadership of `__consumer_offsets` partition `partition`, which
    /// this shard owns: `led` is the epoch it leads it in, if it does. A partition let go
    /// takes its groups with it (their waiting requests are answered NOT_COORDINATOR); one
    /// newly led, or led in a new epoch, is held as loading, and the replay to run is returned.
    pub fn follow_leadership(
        &self,
        partition: PartitionId,
        led: Option<LeaderEpoch>,
    ) -> Option<Load> {
        let held = self.holds.borrow().get(&partition).copied();
        if held.map(Hold::epoch) == led {
            return None;
        }
        if held.is_some() {
            self.let_go(partition);
        }
        let epoch = led?;
        let load = self.next_load.get();
        self.next_load.set(load + 1);
        self.holds.borrow_mut().insert(partition, Hold::Loading { epoch, load });
        Some(Load { partition, epoch, load })
    }

    /// Forgets the groups of `partition`, which this broker no longer leads.
    fn let_go(&self, partition: PartitionId) {
        self.holds.borrow_mut().remove(&partition);
        let forgotten = self.forget_groups_of(partition);
        // Dropping the senders answers their requests NOT_COORDINATOR (`ask`).
        self.waiting.borrow_mut().retain(|_, (of, _)| *of != partition);
        tracing::info!(
            %partition,
            groups = forgotten,
            "no longer coordinating the groups of {OFFSETS_TOPIC}-{partition}"
        );
    }

    /// Drops the groups kept in `partition`; answers how many there were.
    fn forget_groups_of(&self, partition: PartitionId) -> usize {
        let mut groups = self.groups.borrow_mut();
        let before = groups.len();
        groups.retain(|id, _| offsets::partition_for(id) != partition);
        before - groups.len()
    }

    /// Whether `load` is still the replay the coordinator waits for.
    fn is_current(&self, load: Load) -> bool {
        self.holds.borrow().get(&load.partition)
            == Some(&Hold::Loading { epoch: load.epoch, load: load.load })
    }

    /// Runs replay `load`: the partition's log from its start to its end (once written), the
    /// latest record per key winning, then its groups are served. The end is the log's, not
    /// the high watermark: a new leader's high watermark may trail what the replicas
    /// acknowledged under the last leader (Kafka loads to the log end too). A read that fails
    /// is tried again; a replay overtaken by another leadership change stops. Answers how many
    /// records it applied.
    pub async fn load(&self, logs: &impl OffsetsLogs, load: Load) -> usize {
        let started = Instant::now();
        loop {
            if !self.is_current(load) {
                return 0;
            }
            match self.replay(logs, load).await {
                Ok(Some(records)) => {
                    self.finish_load(load);
                    let groups = (self.groups.borrow().keys())
                        .filter(|id| offsets::partition_for(id) == load.partition)
                        .count();
                    tracing::info!(
                        partition = %load.partition,
                        epoch = %load.epoch,
                        records,
                        groups,
                        "coordinating the groups of {OFFSETS_TOPIC}-{} after replaying it in {:?}",
                        load.partition,
                        started.elapsed()
                    );
                    return records;
                }
                Ok(None) => return 0,
                // Overtaken: the current replay's groups are not this one's to drop.
                Err(_) if !self.is_current(load) => return 0,
                Err(e) => {
                    tracing::error!(partition = %load.partition, "replaying {OFFSETS_TOPIC}: {e}; trying again");
                    // Applied so far: dropped, and read again from the start.
                    self.forget_groups_of(load.partition);
                    glommio::timer::sleep(REPLAY_RETRY).await;
                }
            }
        }
    }

    /// Serves the groups of `load`'s partition, replayed (no await since the replay's last
    /// check that it is current).
    fn finish_load(&self, load: Load) {
        self.holds.borrow_mut().insert(load.partition, Hold::Loaded { epoch: load.epoch });
    }

    /// One replay of `load`'s partition: `None` when another leadership change overtook it
    /// (checked after every read, so nothing is applied for a replay no longer wanted).
    async fn replay(&self, logs: &impl OffsetsLogs, load: Load) -> Result<Option<usize>, String> {
        let partition = load.partition;
        let log = logs.led(partition).map_err(|e| e.to_string())?;
        let log = log.log();
        // Everything appended so far, written first: a commit appended under the last
        // leadership may yet be acknowledged, and must be in memory then.
        // (Re-read each round: a truncation may lower the end meanwhile.)
        while log.written_offset() < log.log_end() {
            let end = log.log_end();
            let written = async { log.wait_written_past(Offset(end.0 - 1)).await.is_err() };
            let a_while = async {
                glommio::timer::sleep(WRITTEN_RECHECK).await;
                false
            };
            let failed = futures_lite::future::or(written, a_while).await;
            if !self.is_current(load) {
                return Ok(None);
            }
            if failed {
                return Err(format!("{OFFSETS_TOPIC}-{partition}: the log failed"));
            }
        }
        let (mut offset, end) = (log.log_start(), log.written_offset());
        let mut loaded = 0;
        while offset < end {
            let read = log.read(offset, REPLAY_READ_BYTES, end).await;
            if !self.is_current(load) {
                return Ok(None);
            }
            let read = read.map_err(|e| e.to_string())?;
            let before = offset;
            for chunk in read {
                // Entries sit 16-aligned in read buffers, as the archive needs; copy if not.
                let aligned = archive::aligned(&chunk);
                for entry in entries(&aligned, Check::Checksum) {
                    let StoredEntry { header, payload, .. } = entry.map_err(|e| e.to_string())?;
                    if header.format() == Some(PayloadFormat::Native) {
                        let view =
                            NativeBatchView::new(&header, payload).map_err(|e| e.to_string())?;
                        for record in view.records().filter(|r| r.offset >= offset.0) {
                            match OffsetRecord::decode(
                                record.key(),
                                record.value(),
                                record.headers(),
                            ) {
                                Ok(decoded) => {
                                    self.apply(decoded);
                                    loaded += 1;
                                }
                                Err(DecodeError::Malformed) => {}
                                Err(e) => {
                                    return Err(format!(
                                        "{OFFSETS_TOPIC}-{partition} at offset {}: {e}",
                                        record.offset
                                    ))
                                }
                            }
                        }
                    }
                    offset = offset.max(header.next_offset());
                }
            }
            if offset == before {
                return Err(format!("{OFFSETS_TOPIC}-{partition}: no progress at offset {offset}"));
            }
        }
        Ok(Some(loaded))
    }

    /// Compacts the `__consumer_offsets` partitions this coordinator serves that have sealed
    /// segments (their followers drop the same segments when their leader's log start passes
    /// them, as Kafka's followers do): appends
    /// a snapshot of every live offset of the groups in the partition, then deletes the segments
    /// before it, whose records the snapshot supersedes. Reading the state and appending the
    /// snapshot happen without an await between them, so no commit can fall in between.
    pub async fn compact(&self, logs: &impl OffsetsLogs) {
        let loaded: Vec<(PartitionId, LeaderEpoch)> = (self.holds.borrow().iter())
            .filter_map(|(partition, hold)| match hold {
                Hold::Loaded { epoch } => Some((*partition, *epoch)),
                Hold::Loading { .. } => None,
            })
            .collect();
        for (partition, epoch) in loaded {
            // Checked again for each partition (an earlier one's compaction awaited): one let
            // go, or being replayed again, has no whole state in memory to snapshot.
            let Ok(log) = logs.led(partition) else { continue };
            if !self.serves(partition, epoch, &log) {
                continue;
            }
            if log.log().sealed_segments() < COMPACT_AFTER_SEALED {
                continue;
            }
            let records = self.snapshot(partition);
            let snapshot = if records.is_empty() {
                // Nothing live: everything sealed can go, once what emptied it (tombstones) is
                // committed; until then, memory says more than the replicas agree on.
                if log.log().log_end() > log.high_watermark() {
                    continue;
                }
                None
            } else {
                let mut builder = BatchBuilder::default();
                let now = crate::now_ms();
                records.iter().for_each(|r| builder.push(r.encode(now)));
                let (meta, archive) = builder.build();
                match PendingEntry::native(meta, &archive) {
                    Some(entry) => Some(log.append(entry)),
                    None => continue,
                }
            };
            let compacted = async {
                let snapshot_at = match snapshot.transpose()? {
                    Some(appended) => {
                        log.wait_acked(&appended, Acks::All)
                            .await
                            .map_err(|e| crate::log::LogError::Storage(e.to_string()))?;
                        appended.base_offset
                    }
                    None => log.high_watermark(),
                };
                if !self.serves(partition, epoch, &log) {
                    let why = "the partition was let go while its snapshot was stored";
                    return Err(crate::log::LogError::Storage(why.into()));
                }
                log.delete_segments_below(snapshot_at)
                    .await
                    .map_err(|e| crate::log::LogError::Storage(e.to_string()))
            };
            match compacted.await {
                Ok(deleted) => tracing::info!(
                    partition = %partition,
                    live = records.len(),
                    deleted,
                    "compacted {OFFSETS_TOPIC}"
                ),
                Err(e) => tracing::warn!(%partition, "compacting {OFFSETS_TOPIC}: {e}"),
            }
        }
    }

    /// Whether this coordinator serves `partition`, replayed, in `epoch`, and its broker still
    /// leads `log` in it.
    fn serves(&self, partition: PartitionId, epoch: LeaderEpoch, log: &Partition) -> bool {
        self.holds.borrow().get(&partition) == Some(&Hold::Loaded { epoch })
            && log.leader_epoch() == Some(epoch)
    }

    /// Every live committed offset of the groups kept in `__consumer_offsets` partition
    /// `partition`.
    fn snapshot(&self, partition: PartitionId) -> Vec<OffsetRecord> {
        let groups = self.groups.borrow();
        let mut records = Vec::new();
        for group in groups.values().filter(|g| offsets::partition_for(&g.id) == partition) {
            for ((topic, p), committed) in &group.offsets {
                records.push(OffsetRecord {
                    group: group.id.clone(),
                    topic: topic.clone(),
                    partition: *p,
                    committed: Some(committed.clone()),
                });
            }
        }
        records
    }

    fn apply_all(&self, records: &[OffsetRecord]) {
        records.iter().cloned().for_each(|record| self.apply(record));
    }

    /// Applies one record of the log: the commit path and the replay share it, so the state a
    /// commit leaves is the state a restart rebuilds.
    fn apply(&self, record: OffsetRecord) {
        let mut groups = self.groups.borrow_mut();
        let group = record.group.clone();
        let entry = groups.entry(group.clone()).or_insert_with(|| self.new_group(group));
        let key = (record.topic, record.partition);
        match record.committed {
            Some(committed) => {
                entry.offsets.insert(key, committed);
            }
            None => {
                entry.offsets.remove(&key);
            }
        }
    }
}

/// The group a call is about (every call but a listing).
fn named_group(call: &GroupCall) -> Option<&str> {
    match call {
        GroupCall::JoinGroup(JoinGroup { group, .. })
        | GroupCall::SyncGroup(SyncGroup { group, .. })
        | GroupCall::Heartbeat(Heartbeat { group, .. })
        | GroupCall::LeaveGroup(LeaveGroup { group, .. })
        | GroupCall::CommitOffsets(CommitOffsets { group, .. })
        | GroupCall::FetchOffsets(FetchOffsets { group, .. })
        | GroupCall::DescribeGroup(DescribeGroup { group })
        | GroupCall::DeleteGroup(DeleteGroup { group })
        | GroupCall::DeleteOffsets(DeleteOffsets { group, .. }) => Some(group),
        GroupCall::ListGroups(ListGroups {}) => None,
    }
}

/// Removes a ticket from the coordinator's table of waiting requests when dropped (by then it
/// was answered and is gone already, or its request stopped waiting).
struct Waiting<'a> {
    table: &'a RefCell<HashMap<Ticket, (PartitionId, oneshot::Sender<MemberAnswer>)>>,
    ticket: Ticket,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.table.borrow_mut().remove(&self.ticket);
    }
}

/// Appends offset records to the group's `__consumer_offsets` partition `log` (this shard owns
/// it), runs `apply` as soon as they have their place in the log, and waits until they are
/// fdatasync'ed: an acknowledged commit survives a crash. Applying at the append keeps the
/// in-memory state in log order, which compaction's snapshots rely on, and makes the state
/// visible to the next request before the acknowledgement goes out.
async fn persist(
    log: &Partition,
    group: &str,
    records: &[OffsetRecord],
    apply: impl FnOnce(),
) -> Result<(), ErrorKind> {
    if records.is_empty() {
        apply();
        return Ok(());
    }
    let now = crate::now_ms();
    let mut builder = BatchBuilder::default();
    records.iter().for_each(|r| builder.push(r.encode(now)));
    let (meta, archive) = builder.build();
    let entry = PendingEntry::native(meta, &archive).ok_or(ErrorKind::StorageError)?;
    let stored = async {
        let appended = log.append(entry).map_err(BrokerError::from)?;
        apply();
        log.wait_acked(&appended, Acks::All).await
    };
    stored.await.map_err(|error| {
        tracing::error!(group, "committing offsets: {error}");
        if error.kind == ErrorKind::StorageError {
            ErrorKind::StorageError
        } else {
            ErrorKind::CoordinatorNotAvailable
        }
    })
}

/// The `__consumer_offsets` partition `partition`, which this shard owns and this broker leads.
fn offsets_log(
    logs: &impl OffsetsLogs,
    partition: PartitionId,
) -> Result<Rc<Partition>, ErrorKind> {
    logs.led(partition).map_err(|e| {
        tracing::info!("{OFFSETS_TOPIC}-{partition}: {e}");
        match e.kind {
            ErrorKind::NotCoordinator => ErrorKind::NotCoordinator,
            _ => ErrorKind::CoordinatorNotAvailable,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(group: &str, partition: i32, commit_time_ms: i64) -> OffsetRecord {
        OffsetRecord {
            group: group.into(),
            topic: "t".into(),
            partition,
            committed: Some(Committed {
                offset: 5,
                leader_epoch: -1,
                metadata: String::new(),
                commit_time_ms,
            }),
        }
    }

    #[test]
    fn empty_groups_forget_offsets_past_retention_and_replay_keeps_the_latest() {
        let config = BrokerConfig { offsets_retention_minutes: 60, ..BrokerConfig::default() };
        let coordinator = Coordinator::new(&config);
        let now_ms = crate::now_ms();
        coordinator.apply(record("old", 0, now_ms - 2 * 3_600_000));
        coordinator.apply(record("fresh", 0, now_ms - 60_000));
        coordinator.apply(record("fresh", 1, now_ms));
        coordinator.apply(OffsetRecord { committed: None, ..record("fresh", 1, now_ms) });
        coordinator.tick(Instant::now());
        let groups = coordinator.groups.borrow();
        assert!(!groups.contains_key("old"), "expired offsets and then the empty group go");
        let fresh = &groups["fresh"].offsets;
        assert_eq!(fresh.len(), 1, "the tombstone removed partition 1");
        assert!(fresh.contains_key(&("t".to_string(), 0)));
    }

    /// Regression: a group's first commit inserted an empty group, awaited the offsets log, and
    /// applied its offsets only if the group was still there; a tick in between removed the
    /// empty group, so an acknowledged commit was missing from the next OffsetFetch. The records
    /// now create the group when applied, as they do on replay.
    #[test]
    fn a_tick_between_a_commits_check_and_its_apply_loses_nothing() {
        let coordinator = Coordinator::new(&BrokerConfig::default());
        let commit = OffsetCommit {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            leader_epoch: 2,
            metadata: "m".into(),
        };
        let records = coordinator.commit_records("fresh", "", None, -1, &[commit]).unwrap();
        coordinator.tick(Instant::now());
        coordinator.apply_all(&records);
        let fetched = coordinator.fetch_offsets("fresh", Some(vec![("t".into(), vec![0])]));
        let committed = fetched[0].2.as_ref().expect("the acknowledged commit is visible");
        assert_eq!((committed.offset, committed.leader_epoch), (7, 2));
    }

    /// No logs: what needs one is refused as not led.
    struct NoLogs;

    impl OffsetsLogs for NoLogs {
        fn led(&self, partition: PartitionId) -> Result<Rc<Partition>, BrokerError> {
            Err(BrokerError::new(ErrorKind::NotCoordinator, format!("{partition} not led")))
        }
    }

    fn describe(coordinator: &Coordinator, group: &str) -> Result<GroupAnswer, ErrorKind> {
        let call = GroupCall::DescribeGroup(DescribeGroup { group: group.into() });
        futures_lite::future::block_on(coordinator.handle(&NoLogs, call))
    }

    /// Kafka's `GroupMetadataManager` cycle: a partition led is loading until replayed, served
    /// once replayed, and its groups forgotten when the leadership goes; a replay overtaken by
    /// another leadership change is no longer the one waited for.
    #[test]
    fn groups_are_served_from_their_replay_until_their_partition_is_let_go() {
        let coordinator = Coordinator::new(&BrokerConfig::default());
        let partition = offsets::partition_for("g");
        assert_eq!(describe(&coordinator, "g").err(), Some(ErrorKind::NotCoordinator));
        let first = coordinator.follow_leadership(partition, Some(LeaderEpoch(1)));
        let first = first.expect("a partition newly led is replayed");
        assert_eq!(describe(&coordinator, "g").err(), Some(ErrorKind::CoordinatorLoadInProgress));
        assert_eq!(coordinator.follow_leadership(partition, Some(LeaderEpoch(1))), None);
        coordinator.apply(record("g", 0, crate::now_ms()));
        coordinator.finish_load(first);
        let described = describe(&coordinator, "g").expect("served once replayed");
        assert!(matches!(described, GroupAnswer::DescribeGroup(Some(_))));

        assert_eq!(coordinator.follow_leadership(partition, None), None);
        assert_eq!(describe(&coordinator, "g").err(), Some(ErrorKind::NotCoordinator));
        assert!(coordinator.groups.borrow().is_empty(), "the partition's groups are forgotten");

        let second = coordinator.follow_leadership(partition, Some(LeaderEpoch(3)));
        let second = second.expect("led again, in a newer epoch");
        let third = coordinator.follow_leadership(partition, Some(LeaderEpoch(4)));
        let third = third.expect("and again, before the replay ended");
        assert!(!coordinator.is_current(second) && coordinator.is_current(third));
    }

    /// A join waiting for its rebalance when the partition is let go is answered
    /// NOT_COORDINATOR (its client finds the new coordinator), not left waiting.
    #[test]
    fn a_request_waiting_on_a_group_let_go_is_answered_not_coordinator() {
        use futures_lite::future::{block_on, poll_once};
        let coordinator = Coordinator::new(&BrokerConfig::default());
        let partition = offsets::partition_for("g");
        let load = coordinator.follow_leadership(partition, Some(LeaderEpoch(0)));
        coordinator.finish_load(load.expect("led"));
        let request = JoinRequest {
            member_id: String::new(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            require_known_member: false,
        };
        let call = GroupCall::JoinGroup(JoinGroup { group: "g".into(), request });
        let mut join = Box::pin(coordinator.handle(&NoLogs, call));
        assert!(block_on(poll_once(&mut join)).is_none(), "the join waits out the initial delay");
        coordinator.follow_leadership(partition, None);
        let answered = match block_on(join) {
            Ok(GroupAnswer::JoinGroup(Err((kind, _)))) => Some(kind),
            _ => None,
        };
        assert_eq!(answered, Some(ErrorKind::NotCoordinator));
    }

    #[test]
    fn a_member_commit_to_an_unknown_group_is_refused() {
        let coordinator = Coordinator::new(&BrokerConfig::default());
        let refused = coordinator.commit_records("nobody", "member-1", None, 3, &[]);
        assert_eq!(refused.unwrap_err(), ErrorKind::UnknownMemberId);
        assert!(coordinator.groups.borrow().is_empty(), "a refused commit creates no group");
    }
}
