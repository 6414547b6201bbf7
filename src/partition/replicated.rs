//! A partition with replicas on several brokers: the leader's side (its followers' fetches, the
//! high watermark they allow, `acks=all`, the in-sync changes it asks for) and the follower's
//! (the high watermark its leader tells it). The decisions are the replication layer's
//! (`replication::leader`, `replication::divergence`); this file holds them against the local
//! log and wakes whoever waits on them.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Partition;
use crate::error::{BrokerError, ErrorKind};
use crate::log::in_place::EntryData;
use crate::log::storage::Storage;
use crate::log::{Appended, LogError};
use crate::replication::divergence::{self, EpochEnd, FetchCheck};
use crate::replication::leader::{IsrChange, Position, ReplicaSet};
use crate::types::{LeaderEpoch, NodeId, Offset};

/// The longest an `acks=all` produce waits for its followers before it is answered
/// REQUEST_TIMED_OUT (Kafka's default `request.timeout.ms`).
pub const ACKS_ALL_WAIT_MAX: Duration = Duration::from_secs(30);

/// A partition's replicas as the cluster's metadata has them, from this broker's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub me: NodeId,
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
    /// Raised by every change of the partition's state; an in-sync change is asked against it.
    pub partition_epoch: u32,
    pub min_insync: usize,
    pub lag_max: Duration,
}

/// Where the partition stands among its replicas.
pub enum Replication {
    /// Its only replica, or not replicated yet: the high watermark is what the log has written.
    Alone,
    Leading {
        set: ReplicaSet,
        partition_epoch: u32,
    },
    /// Following a leader (or waiting for one): the high watermark is what the leader last said,
    /// within what this replica has synced.
    Following {
        leader_high_watermark: Offset,
    },
}

/// What a leader answers a follower's fetch.
#[derive(Debug, Default)]
pub struct ReplicaFetched {
    pub entries: Vec<Bytes>,
    pub high_watermark: Offset,
    pub log_start: Offset,
    pub log_end: Offset,
    /// The follower's log parts from the leader's here: it truncates, and fetches again.
    pub diverging: Option<EpochEnd>,
    /// The fetch offset is outside the leader's log (`log_start..=log_end`): the follower
    /// truncates to the leader's end, or starts again at its start.
    pub out_of_range: bool,
    /// The log start moved since this follower was last told it: news even without entries.
    pub log_start_moved: bool,
}

impl<S: Storage> Partition<S> {
    /// At the leader: its replicas, those in sync and `min.insync.replicas` (a replica alone
    /// is its own in-sync set, whatever the setting: it is not replicated yet).
    pub fn replica_counts(&self) -> Option<(usize, usize, usize)> {
        self.leader_epoch.get()?;
        match &*self.replication.borrow() {
            Replication::Alone => Some((1, 1, 1)),
            Replication::Leading { set, .. } => {
                let (replicas, min_insync) = set.sizes();
                Some((replicas, set.isr().len(), min_insync))
            }
            Replication::Following { .. } => None,
        }
    }

    /// Whether the partition has replicas on other brokers (led or followed here).
    pub fn is_replicated(&self) -> bool {
        !matches!(*self.replication.borrow(), Replication::Alone)
    }

    /// Leads in `epoch`, recorded in the log already: a replicated partition gets its replica
    /// set, its followers given the whole lag time to show they keep up.
    pub(super) fn start_leading(&self, epoch: LeaderEpoch, view: &ReplicaView) {
        let replication = match view.replicas.len() > 1 {
            false => Replication::Alone,
            // The controller elects from the in-sync set only: metadata saying otherwise is not
            // acted on.
            true if !view.isr.contains(&view.me) => {
                tracing::error!(topic = %self.log.topic, partition = %self.log.partition, isr = ?view.isr, "named leader outside its in-sync set: not leading");
                return;
            }
            true => {
                self.enter_replicated_role();
                let set = self.replica_set(epoch, view);
                Replication::Leading { set, partition_epoch: view.partition_epoch }
            }
        };
        *self.replication.borrow_mut() = replication;
        self.leader_epoch.set(Some(epoch));
        self.moved.notify(usize::MAX);
    }

    /// The replica set of a leadership in `epoch`, its high watermark as it stands (not
    /// recomputed: while still alone, that would make all the log recovered visible before the
    /// replicas agree on it).
    fn replica_set(&self, epoch: LeaderEpoch, view: &ReplicaView) -> ReplicaSet {
        let epoch_start = (self.log.leader_epochs().last())
            .filter(|e| e.epoch == epoch)
            .map_or(self.log.log_end(), |e| e.start_offset);
        ReplicaSet::new(
            view.me,
            (epoch, epoch_start),
            &view.replicas,
            view.isr.clone(),
            (view.min_insync, view.lag_max),
            self.high_watermark.get(),
            Instant::now(),
        )
    }

    /// The metadata changed the partition's state while this broker leads it in the same epoch:
    /// a new in-sync set (a change it asked for, or a fencing) answers any it asked for; a new
    /// `min.insync.replicas` of its topic holds at once.
    pub(super) fn update_replicas(&self, view: &ReplicaView) {
        let leader_synced = self.log.synced_offset();
        let mut replication = self.replication.borrow_mut();
        match &mut *replication {
            Replication::Leading { set, partition_epoch } => {
                if *partition_epoch != view.partition_epoch {
                    *partition_epoch = view.partition_epoch;
                    set.set_replicas(&view.replicas, view.min_insync, Instant::now());
                    if view.isr.contains(&view.me) {
                        set.set_isr(view.isr.clone(), leader_synced);
                    }
                }
                // The topic's setting changes without a new partition state.
                set.set_min_insync(view.min_insync, leader_synced);
            }
            // A reassignment gives a partition led alone its first followers (KIP-455). What it
            // wrote alone was visible already and stays so: its high watermark is kept, where
            // a recovered log's starts again (`enter_replicated_role`).
            Replication::Alone if view.replicas.len() > 1 && view.isr.contains(&view.me) => {
                if let Some(epoch) = self.leader_epoch.get() {
                    let set = self.replica_set(epoch, view);
                    *replication =
                        Replication::Leading { set, partition_epoch: view.partition_epoch };
                }
            }
            Replication::Alone | Replication::Following { .. } => {}
        }
        drop(replication);
        self.moved.notify(usize::MAX);
    }

    /// Leads the partition no more: another broker does, or none. A replicated partition
    /// follows from here, its high watermark kept; acks waiters are woken to fail.
    pub fn stop_leading(&self) {
        self.leader_epoch.set(None);
        let mut replication = self.replication.borrow_mut();
        if let Replication::Leading { set, .. } = &*replication {
            let leader_high_watermark = set.high_watermark();
            *replication = Replication::Following { leader_high_watermark };
        }
        drop(replication);
        self.moved.notify(usize::MAX);
    }

    /// Follows the partition's leader (or waits for one): a replica that does not lead it.
    pub fn follow(&self) {
        self.stop_leading();
        self.enter_replicated_role();
        let mut replication = self.replication.borrow_mut();
        if matches!(*replication, Replication::Alone) {
            let leader_high_watermark = self.high_watermark.get();
            *replication = Replication::Following { leader_high_watermark };
        }
    }

    /// The first time the partition leaves being alone (a replica's first role since it was
    /// opened): what its log recovered is visible only once the replicas agree on it, so the
    /// high watermark starts from the log start, as no reader has seen anything of it yet.
    fn enter_replicated_role(&self) {
        // A replicated partition goes back to alone only when a leadership begins with a single
        // replica (a reassignment to one): its high watermark is then the log's written end,
        // never lower than before.
        if matches!(*self.replication.borrow(), Replication::Alone) {
            self.high_watermark.set(self.log.log_start());
        }
    }

    /// The high watermark the replicas allow, when the partition is replicated.
    pub(super) fn replicated_high_watermark(&self) -> Option<Offset> {
        match &mut *self.replication.borrow_mut() {
            Replication::Alone => None,
            Replication::Leading { set, .. } => {
                Some(set.on_leader_synced(self.log.synced_offset()))
            }
            Replication::Following { leader_high_watermark } => {
                Some((*leader_high_watermark).min(self.log.synced_offset()))
            }
        }
    }

    /// Refuses an `acks=all` produce before it is appended when the in-sync set is below
    /// `min.insync.replicas` (Kafka's NOT_ENOUGH_REPLICAS).
    pub fn check_acks_all(&self) -> Result<(), BrokerError> {
        if let Replication::Leading { set, .. } = &*self.replication.borrow() {
            set.check_acks_all().map_err(|refused| {
                let why = format!(
                    "{}-{}: {} in-sync replicas {:?}, min.insync.replicas is {}",
                    self.log.topic,
                    self.log.partition,
                    refused.in_sync,
                    set.isr(),
                    refused.min_insync
                );
                BrokerError::new(ErrorKind::NotEnoughReplicas, why)
            })?;
        }
        Ok(())
    }

    /// Waits until the high watermark passes the appended entry: every in-sync replica has
    /// synced it. Fails when the entry is cut, the leadership it was appended in (`epoch`)
    /// ends, the in-sync set falls below `min.insync.replicas`, or the wait takes longer than
    /// [`ACKS_ALL_WAIT_MAX`].
    pub(super) async fn wait_replicated(
        &self,
        appended: &Appended,
        epoch: Option<LeaderEpoch>,
    ) -> Result<(), BrokerError> {
        let waited = async {
            loop {
                let (moved, changed) = (self.moved.listen(), self.log.listen_changed());
                self.log.kept(appended)?;
                if self.high_watermark() >= appended.next_offset {
                    return Ok(());
                }
                if self.leader_epoch.get() != epoch || epoch.is_none() {
                    let why = format!(
                        "{}-{}: this broker stopped leading before the followers had offset {}",
                        self.log.topic, self.log.partition, appended.base_offset
                    );
                    return Err(BrokerError::new(ErrorKind::NotLeaderOrFollower, why));
                }
                if let Replication::Leading { set, .. } = &*self.replication.borrow() {
                    if let Err(refused) = set.check_acks_all() {
                        let why = format!(
                            "{}-{}: appended at {}, then the in-sync set shrank to {:?} \
                             (min.insync.replicas {})",
                            self.log.topic,
                            self.log.partition,
                            appended.base_offset,
                            set.isr(),
                            refused.min_insync
                        );
                        return Err(BrokerError::new(ErrorKind::NotEnoughReplicasAfterAppend, why));
                    }
                }
                futures_lite::future::or(moved, changed).await;
            }
        };
        let timeout = async {
            glommio::timer::sleep(ACKS_ALL_WAIT_MAX).await;
            let why = format!(
                "{}-{}: the in-sync replicas did not confirm offset {} within {:?}",
                self.log.topic, self.log.partition, appended.base_offset, ACKS_ALL_WAIT_MAX
            );
            Err(BrokerError::new(ErrorKind::RequestTimedOut, why))
        };
        futures_lite::future::or(waited, timeout).await
    }

    /// Waits until the high watermark passes `offset`, or the partition closes or fails.
    pub async fn wait_high_watermark_past(&self, offset: Offset) -> bool {
        loop {
            let (moved, changed) = (self.moved.listen(), self.log.listen_changed());
            if self.high_watermark() > offset {
                return true;
            }
            if self.log.has_failed() {
                return false;
            }
            futures_lite::future::or(moved, changed).await;
        }
    }

    /// A follower's fetch at the leader, in the leader's epoch (checked by the caller): its
    /// log end `fetch_offset`, what it has synced, and the epoch of its last entry. Counts its
    /// position toward the high watermark when its log agrees with this one, and answers the
    /// entries after it (up to what this log has written, not the high watermark: a follower
    /// copies everything), or where the logs diverge.
    pub async fn serve_follower(
        &self,
        follower: NodeId,
        (fetch_offset, synced): (Offset, Offset),
        last_fetched_epoch: Option<LeaderEpoch>,
        max_bytes: usize,
    ) -> Result<ReplicaFetched, BrokerError> {
        let check = self.log.with_epochs(|epochs, start, end| {
            divergence::check_fetch(epochs, (start, end), fetch_offset, last_fetched_epoch)
        });
        let (log_start, log_end) = (self.log.log_start(), self.log.log_end());
        let mut answer = ReplicaFetched { log_start, log_end, ..ReplicaFetched::default() };
        match check {
            FetchCheck::Diverging(diverging) => answer.diverging = Some(diverging),
            FetchCheck::OutOfRange => answer.out_of_range = true,
            FetchCheck::Agrees => {
                answer.log_start_moved = self.tell_log_start(follower, log_start);
                self.count_follower(follower, Position { end: fetch_offset, synced });
                let written = self.log.written_offset();
                answer.entries = self.log.read(fetch_offset, max_bytes, written).await?;
            }
        }
        answer.high_watermark = self.high_watermark();
        Ok(answer)
    }

    /// A follower's log start as its fetch says: a DeleteRecords waiting for the in-sync
    /// replicas' may be done.
    pub fn note_follower_log_start(&self, follower: NodeId, log_start: Offset) {
        let moved = match &mut *self.replication.borrow_mut() {
            Replication::Leading { set, .. } => set.note_log_start(follower, log_start),
            _ => false,
        };
        if moved {
            self.moved.notify(usize::MAX);
        }
    }

    /// The lowest log start of the in-sync followers; `None` when the partition is not led
    /// here with followers in sync.
    pub fn in_sync_log_start(&self) -> Option<Offset> {
        match &*self.replication.borrow() {
            Replication::Leading { set, .. } => set.in_sync_log_start(),
            _ => None,
        }
    }

    /// Whether `follower` learns a new log start from this answer.
    fn tell_log_start(&self, follower: NodeId, log_start: Offset) -> bool {
        match &mut *self.replication.borrow_mut() {
            Replication::Leading { set, .. } => set.tell_log_start(follower, log_start),
            _ => false,
        }
    }

    /// Counts a follower's position: the high watermark may move, and it may now be in sync.
    fn count_follower(&self, follower: NodeId, at: Position) {
        let leader = Position { end: self.log.log_end(), synced: self.log.synced_offset() };
        if let Replication::Leading { set, .. } = &mut *self.replication.borrow_mut() {
            // A follower's synced end never passes its log end, nor a leader's synced end its
            // written one: what the replica set counts would mean nothing otherwise.
            let at = Position { synced: at.synced.min(at.end), ..at };
            set.on_fetch(follower, at, leader, Instant::now());
        }
        self.high_watermark();
    }

    /// The in-sync set to ask the controller for now, if it should change, with the leader and
    /// partition epochs it is asked in; pending until the metadata answers it
    /// ([`Self::change_refused`] when the controller refuses).
    /// Only `eligible` followers (live brokers, as the metadata says) are proposed to join.
    pub fn isr_change(
        &self,
        now: Instant,
        eligible: impl Fn(NodeId) -> bool,
    ) -> Option<(IsrChange, LeaderEpoch, u32)> {
        let epoch = self.leader_epoch.get()?;
        match &mut *self.replication.borrow_mut() {
            Replication::Leading { set, partition_epoch } => {
                set.isr_change(now, eligible).map(|change| (change, epoch, *partition_epoch))
            }
            _ => None,
        }
    }

    /// The controller refused (or did not answer) the in-sync change asked for.
    pub fn change_refused(&self) {
        if let Replication::Leading { set, .. } = &mut *self.replication.borrow_mut() {
            set.change_refused();
        }
    }

    /// The controller refused the in-sync change asked in `partition_epoch` for good, or it
    /// changed nothing: still pending in that epoch, it may be asked again. (A change whose
    /// outcome is unknown stays pending until the metadata says: one that was committed counts
    /// its new members from the moment it was asked.)
    pub fn change_answered(&self, asked_in: u32) {
        if let Replication::Leading { set, partition_epoch } = &mut *self.replication.borrow_mut() {
            if *partition_epoch == asked_in {
                set.change_refused();
            }
        }
    }

    /// Whether the in-sync change asked in `partition_epoch` is still pending, this broker still
    /// leading in `epoch`: what the asking task keeps asking for while the answer is unknown.
    pub fn change_pending(&self, epoch: LeaderEpoch, asked_in: u32) -> bool {
        let leading = self.leader_epoch.get() == Some(epoch);
        leading
            && matches!(&*self.replication.borrow(), Replication::Leading { set, partition_epoch }
                if *partition_epoch == asked_in && set.has_pending_change())
    }

    /// A follower's log took entries from its leader, which said its high watermark was
    /// `leader_high_watermark`.
    pub fn followed_to(&self, leader_high_watermark: Offset) {
        if let Replication::Following { leader_high_watermark: known } =
            &mut *self.replication.borrow_mut()
        {
            *known = (*known).max(leader_high_watermark);
        }
        self.high_watermark();
    }

    /// Appends an entry as the leader stored it (a follower's fetch); wait for it to be synced
    /// with [`crate::log::PartitionLog::wait_synced`] before reporting it. Refused unless the
    /// partition follows (a fetch answered after this replica came to lead must not land).
    pub fn append_replicated(&self, entry: EntryData<S>) -> Result<Appended, BrokerError> {
        let following = matches!(*self.replication.borrow(), Replication::Following { .. });
        if !following || self.leader_epoch.get().is_some() {
            let why =
                format!("{}-{} does not follow a leader now", self.log.topic, self.log.partition);
            return Err(BrokerError::new(ErrorKind::NotLeaderOrFollower, why));
        }
        Ok(self.log.append_at(entry)?)
    }

    /// Removes the entries from `offset` on, durably: where the follower's log parts from its
    /// leader's. Returns the new log end.
    pub async fn truncate_replica(&self, offset: Offset) -> Result<Offset, LogError> {
        let end = self.log.truncate_to(offset).await?;
        self.high_watermark();
        Ok(end)
    }

    /// A follower whose log ends before its leader's log start (it was away while the leader's
    /// retention deleted what it lacks): its log starts over, empty, at `offset`, the leader's
    /// log start (Kafka's `truncateFullyAndStartAt`), and so does its high watermark.
    pub async fn start_replica_over(&self, offset: Offset) -> Result<Offset, LogError> {
        self.start_replica_over_within(offset, offset).await
    }

    /// [`Self::start_replica_over`] at `at`, the base of the leader's entry that holds its log
    /// start `log_start`: the entry comes whole, and the log start stays where the leader's is.
    pub async fn start_replica_over_within(
        &self,
        at: Offset,
        log_start: Offset,
    ) -> Result<Offset, LogError> {
        let end = self.log.start_over_within(at, log_start).await?;
        self.truncations_seen.set(self.log.truncations());
        self.high_watermark.set(end);
        self.moved.notify(usize::MAX);
        Ok(end)
    }
}
