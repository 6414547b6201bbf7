//! A shard's group coordinator: the groups whose `__consumer_offsets` partition this shard owns,
//! their timers, and their committed offsets, made durable in that partition before a commit is
//! acknowledged and replayed from it when the shard opens.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::error::ErrorKind;
use crate::group::offsets::{self, Committed, DecodeError, OffsetRecord, OFFSETS_TOPIC};
use crate::group::state::{
    Action, Event, Group, GroupDescription, GroupState, HeartbeatCall, JoinCall, JoinReply,
    JoinRequest, LeaveCall, MemberAnswer, MemberRequest, SyncCall, SyncReply, Ticket,
};
use crate::partition::{Acks, Partition};
use crate::record::archive;
use crate::record::batch::NativeBatchView;
use crate::record::entry::{entries, Check, StoredEntry};
use crate::record::{BatchBuilder, PayloadFormat, PendingEntry};
use crate::types::PartitionId;

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

/// What a coordinator needs of its shard: the `__consumer_offsets` partitions the shard owns.
/// The shard implements it; the coordinator sees nothing else of the shard, so groups sit below
/// the shard layer and can be driven by a test without one.
pub trait OffsetsLogs {
    /// The `__consumer_offsets` partitions this shard owns, by number (none until the topic
    /// exists).
    fn owned(&self) -> Vec<(PartitionId, Rc<Partition>)>;

    /// `__consumer_offsets` partition `partition`, which this shard owns, creating the topic on
    /// first use.
    fn open(
        &self,
        partition: PartitionId,
    ) -> impl std::future::Future<Output = Result<Rc<Partition>, BrokerError>>;
}

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
}

pub struct Coordinator {
    groups: RefCell<HashMap<String, Group>>,
    /// Requests handed to a group and not yet answered, by the ticket they went in with.
    waiting: RefCell<HashMap<Ticket, oneshot::Sender<MemberAnswer>>>,
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
            waiting: RefCell::default(),
            next_ticket: Cell::new(0),
            initial_delay: Duration::from_millis(config.group_initial_rebalance_delay_ms),
            session_timeout_min: Duration::from_millis(config.group_min_session_timeout_ms),
            session_timeout_max: Duration::from_millis(config.group_max_session_timeout_ms),
            offsets_retention: Duration::from_secs(config.offsets_retention_minutes * 60),
            last_retention_check: Cell::new(None),
        }
    }

    pub async fn handle(&self, logs: &impl OffsetsLogs, call: GroupCall) -> GroupAnswer {
        let now = Instant::now();
        match call {
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
                GroupAnswer::SyncGroup(synced.unwrap_or(Err(ErrorKind::UnknownMemberId)))
            }
            GroupCall::Heartbeat(Heartbeat { group, member_id, instance_id, generation }) => {
                let beat = HeartbeatCall { member_id, instance_id, generation };
                let beat = self.ask(&group, beat, now).await;
                GroupAnswer::Heartbeat(beat.unwrap_or(Err(ErrorKind::UnknownMemberId)))
            }
            GroupCall::LeaveGroup(LeaveGroup { group, members }) => {
                let left = self.ask(&group, LeaveCall { members }, now).await;
                GroupAnswer::LeaveGroup(left.ok_or(ErrorKind::UnknownMemberId))
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
        }
    }

    /// Hands `request` to `group` and waits for its answer: `None` when there is no such group,
    /// or the coordinator stopped before the answer came.
    async fn ask<R: MemberRequest>(
        &self,
        group: &str,
        request: R,
        now: Instant,
    ) -> Option<R::Answer> {
        let ticket = Ticket(self.next_ticket.get());
        self.next_ticket.set(ticket.0 + 1);
        let (reply, answer) = oneshot::channel();
        let actions = {
            let mut groups = self.groups.borrow_mut();
            let entry = groups.get_mut(group)?;
            self.waiting.borrow_mut().insert(ticket, reply);
            entry.step(Event::Request { ticket, call: request.into_call() }, now)
        };
        self.carry_out(group, actions);
        // A request whose connection goes away stops waiting here: its ticket leaves the table
        // then, not when the group answers it (a join may wait a whole rebalance timeout).
        let _waiting = Waiting { table: &self.waiting, ticket };
        answer.await.ok().and_then(R::from_answer)
    }

    /// Does what a group's step asked: answers go to the requests waiting for them (a request
    /// whose connection went away meanwhile is not waiting any more).
    fn carry_out(&self, group: &str, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Answer { ticket, answer } => {
                    if let Some(waiting) = self.waiting.borrow_mut().remove(&ticket) {
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
        joined.unwrap_or(Err((ErrorKind::UnknownMemberId, String::new())))
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
        let log = offsets_log(logs, offsets::partition_for(&group)).await?;
        // From here to the append nothing awaits: no tick, join or delete can change the group
        // between the check and the state the commit leaves.
        let records = self.commit_records(&group, member_id, instance_id, generation, &commits)?;
        persist(&log, &group, &records, || self.apply_all(&records)).await
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
        let log = offsets_log(logs, offsets::partition_for(group)).await?;
        // Checked again after the await, and nothing awaits from here to the append: a member
        // that joined meanwhile keeps the group.
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
        persist(&log, group, &tombstones, || {
            self.groups.borrow_mut().remove(group);
        })
        .await
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

    /// Replays this shard's `__consumer_offsets` partitions: the latest record per key wins.
    pub async fn load(&self, logs: &impl OffsetsLogs) -> Result<usize, String> {
        let mut loaded = 0;
        for (partition, log) in logs.owned() {
            let (mut offset, end) = (log.log_start(), log.high_watermark());
            while offset < end {
                let read = log.read(offset, REPLAY_READ_BYTES).await.map_err(|e| e.to_string())?;
                let before = offset;
                for chunk in read.entries {
                    // Entries sit 16-aligned in read buffers, as the archive needs; copy if not.
                    let aligned = archive::aligned(&chunk);
                    for entry in entries(&aligned, Check::Checksum) {
                        let StoredEntry { header, payload, .. } =
                            entry.map_err(|e| e.to_string())?;
                        if header.format() == Some(PayloadFormat::Native) {
                            let view = NativeBatchView::new(&header, payload)
                                .map_err(|e| e.to_string())?;
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
                    return Err(format!(
                        "{OFFSETS_TOPIC}-{partition}: no progress at offset {offset}"
                    ));
                }
            }
        }
        Ok(loaded)
    }

    /// Compacts this shard's `__consumer_offsets` partitions that have sealed segments: appends
    /// a snapshot of every live offset of the groups in the partition, then deletes the segments
    /// before it, whose records the snapshot supersedes. Reading the state and appending the
    /// snapshot happen without an await between them, so no commit can fall in between.
    pub async fn compact(&self, logs: &impl OffsetsLogs) {
        for (partition, log) in logs.owned() {
            if log.log().sealed_segments() < COMPACT_AFTER_SEALED {
                continue;
            }
            let records = self.snapshot(partition);
            let snapshot = if records.is_empty() {
                // Nothing live: everything sealed can go.
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

/// Removes a ticket from the coordinator's table of waiting requests when dropped (by then it
/// was answered and is gone already, or its request stopped waiting).
struct Waiting<'a> {
    table: &'a RefCell<HashMap<Ticket, oneshot::Sender<MemberAnswer>>>,
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

/// The `__consumer_offsets` partition `partition`, which this shard owns, created on first use.
async fn offsets_log(
    logs: &impl OffsetsLogs,
    partition: PartitionId,
) -> Result<Rc<Partition>, ErrorKind> {
    logs.open(partition).await.map_err(|e| {
        tracing::error!("{OFFSETS_TOPIC}-{partition}: {e}");
        ErrorKind::CoordinatorNotAvailable
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

    #[test]
    fn a_member_commit_to_an_unknown_group_is_refused() {
        let coordinator = Coordinator::new(&BrokerConfig::default());
        let refused = coordinator.commit_records("nobody", "member-1", None, 3, &[]);
        assert_eq!(refused.unwrap_err(), ErrorKind::UnknownMemberId);
        assert!(coordinator.groups.borrow().is_empty(), "a refused commit creates no group");
    }
}
