//! The partition layer: what a partition's records mean to clients, above the local log that
//! stores them (the part of Kafka's `kafka.cluster.Partition` that owns visibility).
//!
//! The local log ([`PartitionLog`]) knows only its own disk: what it has appended, written and
//! fdatasync'ed. This layer decides what clients see of it, and when a producer is answered:
//!
//! - **The high watermark** is the offset below which consumers read. It never passes what the
//!   local log has written and never falls below the log start, and it only moves up, except
//!   that a replica's truncation (KIP-101) lowers it to the new log end, as Kafka does; every
//!   move asserts so.
//! - **Acks waiters:** `acks=1` waits for the leader's write, `acks=all` for its fdatasync.
//! - **What readers may see:** a read stops at the high watermark. An offset between it and the
//!   log end is in range with nothing to read yet, as in Kafka, so a consumer that is ahead of a
//!   new leader's high watermark waits instead of having its position reset. ListOffsets and
//!   retention stop at the high watermark too.
//!
//! - **Replicas** (`replicated.rs`): a partition with more than one replica is led or followed.
//!   Its leader's high watermark is the least synced end over the in-sync replicas (the
//!   replication layer's `ReplicaSet`), `acks=all` waits for it to pass the batch, and a produce
//!   is refused when the in-sync set is below `min.insync.replicas`; a follower's is what its
//!   leader last said, within what it has synced itself. A partition with one replica keeps the
//!   simple rule: its high watermark is what its log has written.
//!
//! Nothing below this layer knows that replicas exist, and nothing above it reads the local
//! log's watermarks or deletes from it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{BrokerError, ErrorKind};
use crate::log::storage::{DmaStorage, Storage};
use crate::log::{Appended, LogError, PartitionLog};
use crate::record::PendingEntry;
use crate::types::{LeaderEpoch, Offset};

mod replicated;
use replicated::Replication;
pub use replicated::{ReplicaFetched, ReplicaView};

/// ListOffsets' special timestamps (Kafka's): the high watermark, and the log start.
pub const OFFSET_LATEST: i64 = -1;
pub const OFFSET_EARLIEST: i64 = -2;
/// ListOffsets v7+: the first record with the partition's largest timestamp (KIP-734).
pub const OFFSET_MAX_TIMESTAMP: i64 = -3;
/// ListOffsets v8+: the local log's start (KIP-405); v9+: the latest offset in remote storage
/// (KIP-1005).
pub const OFFSET_EARLIEST_LOCAL: i64 = -4;
pub const OFFSET_LATEST_TIERED: i64 = -5;

/// `acks` as Kafka defines it: what a produce waits for before it is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Acks {
    /// No response at all.
    None,
    /// After the leader's O_DIRECT write completes.
    Leader,
    /// After fdatasync (and, with replication, every in-sync replica).
    All,
}

/// As Kafka writes it: `0`, `1` or `all`.
impl std::fmt::Display for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        })
    }
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "0" => Ok(Acks::None),
            "1" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            other => Err(format!("acks must be 0, 1 or all, not {other:?}")),
        }
    }
}

/// Entries returned by a read, whole and in order, with the watermarks a client tracks.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub entries: Vec<Bytes>,
    pub high_watermark: Offset,
    pub log_start: Offset,
    /// When a fetch that waited for data was woken by it (set by the shard's long poll), so the
    /// listener can time the delivery that follows.
    pub woken_at: Option<Instant>,
}

impl ReadOutcome {
    /// The stored bytes read.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(Bytes::len).sum()
    }
}

/// Where a partition's log starts, what consumers see of it, and where it ends: an offset in
/// `log_start..=log_end` is in range, and the records below `high_watermark` are readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    pub log_start: Offset,
    pub high_watermark: Offset,
    pub log_end: Offset,
}

impl LogBounds {
    pub fn contains(&self, offset: Offset) -> bool {
        (self.log_start..=self.log_end).contains(&offset)
    }
}

/// One partition as clients see it: its local log, and what of it is visible.
pub struct Partition<S: Storage = DmaStorage> {
    log: Rc<PartitionLog<S>>,
    /// Consumers read below it. Moved only by [`Self::high_watermark`].
    high_watermark: Cell<Offset>,
    /// The log's truncation count when the high watermark last moved.
    truncations_seen: Cell<u64>,
    /// The leader epoch this broker leads the partition in, as the metadata it last published
    /// says (`None`: it does not lead it): producers and consumers are served only by the
    /// leader.
    leader_epoch: Cell<Option<LeaderEpoch>>,
    /// Alone, leading replicas, or following a leader (`replicated.rs`).
    replication: RefCell<Replication>,
    /// Fired when the high watermark moves or the partition's role changes: what `acks=all`
    /// producers and waiting consumers of a replicated partition wait on.
    moved: Event,
}

impl<S: Storage> Partition<S> {
    /// The partition over a just-opened log. Everything the log recovered is visible: a lone
    /// replica has no follower to wait for.
    pub fn new(log: Rc<PartitionLog<S>>) -> Self {
        let high_watermark = Cell::new(log.written_offset());
        let truncations_seen = Cell::new(log.truncations());
        Self {
            log,
            high_watermark,
            truncations_seen,
            leader_epoch: Cell::new(None),
            replication: RefCell::new(Replication::Alone),
            moved: Event::new(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader_epoch.get().is_some()
    }

    /// The leader epoch this broker leads the partition in, if it leads it.
    pub fn leader_epoch(&self) -> Option<LeaderEpoch> {
        self.leader_epoch.get()
    }

    /// Leads the partition in `epoch`, as the cluster's metadata says. The epoch starts at the
    /// log's end, durably, before the first produce of it is taken (KIP-101's leader epoch
    /// cache: where each leader's entries begin, which OffsetForLeaderEpoch answers and a
    /// follower truncates by); entries appended from then on carry it. Nothing is served while
    /// the start is being recorded; an epoch older than the log's latest is refused.
    /// `replicas`: the partition's replicas as the metadata has them.
    pub async fn lead(&self, epoch: LeaderEpoch, replicas: &ReplicaView) -> Result<(), LogError> {
        self.stop_leading();
        self.log.assign_epoch(epoch, self.log.log_end()).await?;
        self.start_leading(epoch, replicas);
        Ok(())
    }

    /// Leads the partition in `epoch` at once when its log has that epoch recorded already as
    /// its latest (a restart, another publication): nothing to write, so no moment without a
    /// leader. Returns whether it does.
    pub fn lead_as_recorded(&self, epoch: LeaderEpoch, replicas: &ReplicaView) -> bool {
        let recorded = self.log.latest_durable_epoch() == Some(epoch);
        if recorded && self.leader_epoch.get() == Some(epoch) {
            self.update_replicas(replicas);
        } else if recorded {
            self.start_leading(epoch, replicas);
        }
        recorded
    }

    /// The local log, for what is not about visibility (its topic config, retention's rolling,
    /// closing, its leader epochs and watermarks for a follower's fetch).
    pub fn log(&self) -> &Rc<PartitionLog<S>> {
        &self.log
    }

    /// Appends a producer's entry. Nothing awaits, so appends keep the order they are made in;
    /// answer the producer after [`Self::wait_acked`].
    pub fn append(&self, entry: PendingEntry) -> Result<Appended, LogError> {
        self.log.append(entry)
    }

    /// Waits for what `acks` promises the producer of `appended`: with `acks=0`, only for room
    /// to append more (the producer hears nothing, but must not outrun the disk).
    /// `acks=all` on a replicated partition waits for the high watermark: every in-sync
    /// replica has synced the entry (`replicated.rs`).
    pub async fn wait_acked(&self, appended: &Appended, acks: Acks) -> Result<(), BrokerError> {
        // A replicated leader's log end counts only once synced: it syncs whatever it takes,
        // whoever waits.
        if self.is_replicated() {
            self.log.sync_up_to(appended.next_offset);
        }
        match acks {
            Acks::None => Ok(self.log.wait_for_room().await?),
            Acks::Leader => Ok(self.log.wait_written(appended).await?),
            // Durable, not just written: Spate's promise for acks=all (DESIGN, "Cluster").
            Acks::All => {
                // The leadership it was appended in, before any await: one that ends while the
                // entry syncs fails the produce, even if the broker leads again by then.
                let epoch = self.leader_epoch.get();
                self.log.wait_synced(appended).await?;
                match self.is_replicated() {
                    true => self.wait_replicated(appended, epoch).await,
                    false => Ok(()),
                }
            }
        }
    }

    /// The high watermark, first moved up to what every replica has: with one replica, what
    /// the local log has written; replicated, what every in-sync replica has synced.
    pub fn high_watermark(&self) -> Offset {
        let previous = self.high_watermark.get();
        let written = self.log.written_offset();
        let reached = match self.replicated_high_watermark() {
            // A replica's own log may have less than its leader says (a follower behind it).
            Some(replicated) => replicated.min(written).max(previous.min(written)),
            None => written,
        };
        let truncations = self.log.truncations();
        if truncations != self.truncations_seen.get() {
            // A truncation cut the log's end: what it removed is not visible any more (Kafka
            // lowers a follower's high watermark to its new log end too).
            self.truncations_seen.set(truncations);
            let lowered = previous.min(reached);
            self.high_watermark.set(lowered);
            return lowered;
        }
        if reached != previous {
            let (log_start, log_end) = (self.log.log_start(), self.log.log_end());
            assert!(
                previous < reached && log_start <= reached && reached <= log_end,
                "{}-{}: the high watermark cannot move from {previous} to {reached} \
                 (log start {log_start}, log end {log_end})",
                self.log.topic,
                self.log.partition,
            );
            self.high_watermark.set(reached);
            self.log.note_high_watermark(reached);
            self.moved.notify(usize::MAX);
        }
        reached
    }

    pub fn log_start(&self) -> Offset {
        self.log.log_start()
    }

    pub fn bounds(&self) -> LogBounds {
        let high_watermark = self.high_watermark();
        LogBounds { log_start: self.log.log_start(), high_watermark, log_end: self.log.log_end() }
    }

    /// Whole entries holding `offset` and after, below the high watermark, up to about
    /// `max_bytes` (always at least one entry when any is visible).
    pub async fn read(&self, offset: Offset, max_bytes: usize) -> Result<ReadOutcome, LogError> {
        let (high_watermark, log_start) = (self.high_watermark(), self.log.log_start());
        let entries = self.log.read(offset, max_bytes, high_watermark).await?;
        Ok(ReadOutcome { entries, high_watermark, log_start, woken_at: None })
    }

    /// Waits until the high watermark passes `offset`, at most `wait`. Returns whether it did.
    pub async fn wait_for_data(&self, offset: Offset, wait: Duration) -> bool {
        let data = async {
            match self.is_replicated() {
                true => self.wait_high_watermark_past(offset).await,
                // With one replica the high watermark moves exactly when the written offset
                // does.
                false => self.log.wait_written_past(offset).await.is_ok(),
            }
        };
        let timeout = async {
            glommio::timer::sleep(wait).await;
            false
        };
        futures_lite::future::or(data, timeout).await
    }

    /// The offset and timestamp of the first visible record whose timestamp is at or after
    /// `timestamp`, or `None` (Kafka answers ListOffsets from below the high watermark).
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<(Offset, i64)>, LogError> {
        let found = self.log.offset_for_timestamp(timestamp).await?;
        let high_watermark = self.high_watermark();
        Ok(found.filter(|(offset, _)| *offset < high_watermark))
    }

    /// The first visible record with the largest timestamp of the log, and that timestamp
    /// (ListOffsets' max-timestamp query, KIP-734); `None` when none is visible.
    pub async fn max_timestamp_record(&self) -> Result<Option<(Offset, i64)>, LogError> {
        let found = self.log.max_timestamp_record().await?;
        let high_watermark = self.high_watermark();
        Ok(found.filter(|(offset, _)| *offset < high_watermark))
    }

    /// Kafka's DeleteRecords (KIP-107), at the leader: the log start moves up to `offset` (the
    /// high watermark for `None`), which may not pass the high watermark. Answered, with the new
    /// log start (the low watermark), once it is durable here and every in-sync follower has
    /// taken it (as Kafka's delayed DeleteRecords): a new leader then starts there too.
    /// REQUEST_TIMED_OUT when the followers have not within `timeout`.
    pub async fn delete_records(
        &self,
        offset: Option<Offset>,
        timeout: Duration,
    ) -> Result<Offset, BrokerError> {
        let deadline = Instant::now() + timeout;
        let high_watermark = self.high_watermark();
        let target = offset.unwrap_or(high_watermark);
        if target > high_watermark {
            let why = format!(
                "{}-{}: offset {target} is past the high watermark {high_watermark}",
                self.log.topic, self.log.partition
            );
            return Err(BrokerError::new(ErrorKind::OffsetOutOfRange, why));
        }
        // A lone replica's high watermark is its written end: what it deletes below must be
        // synced first, or the log start would stop short of it (it never passes the synced end).
        self.log.sync_through(target).await?;
        let start = self.log.advance_start(target).await?;
        loop {
            let moved = self.moved.listen();
            if !self.is_leader() {
                let why = format!("{}-{} is led elsewhere now", self.log.topic, self.log.partition);
                return Err(BrokerError::new(ErrorKind::NotLeaderOrFollower, why));
            }
            if self.in_sync_log_start().is_none_or(|followers| followers >= start) {
                return Ok(start);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = format!(
                    "{}-{}: the in-sync followers have not moved their log start to {start} yet",
                    self.log.topic, self.log.partition
                );
                return Err(BrokerError::new(ErrorKind::RequestTimedOut, why));
            }
            futures_lite::future::or(moved, async {
                glommio::timer::sleep(left).await;
            })
            .await;
        }
    }

    /// A follower takes its leader's log start (moved by retention, DeleteRecords, or the
    /// offsets log's compaction), within its own high watermark, as Kafka's followers do.
    pub async fn follow_log_start(&self, leader_start: Offset) -> Result<Offset, LogError> {
        self.log.advance_start(leader_start.min(self.high_watermark())).await
    }

    /// Deletes the sealed segments wholly below `offset`, never past the high watermark (as
    /// Kafka's DeleteRecords): the offsets log's compaction. Returns how many it deleted.
    pub async fn delete_segments_below(&self, offset: Offset) -> std::io::Result<usize> {
        self.log.delete_segments_below(offset.min(self.high_watermark())).await
    }

    /// Applies retention once: deletes what is past the topic's limits and below the high
    /// watermark (records not yet visible stay, as in Kafka). Returns how many segments went.
    pub async fn enforce_retention(&self, now_ms: i64) -> std::io::Result<usize> {
        self.log.enforce_retention(now_ms, self.high_watermark()).await
    }
}

#[cfg(test)]
mod tests;
