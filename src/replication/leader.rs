//! A partition leader's view of its replicas (the leader's half of Kafka's `Partition`): where
//! each follower's log ends as far as the leader knows, the high watermark those ends allow,
//! which followers leave the in-sync set or may join it, and whether an `acks=all` produce may
//! be taken. No I/O and no clock: the caller passes the time, and carries out what comes back
//! (the controller changes the in-sync set, KIP-497's AlterPartition).
//!
//! A follower's fetch carries two positions: its log end (where it continues, as in Kafka) and
//! how much of its log it has synced. The high watermark counts only what replicas have synced
//! (the leader's own synced end included): everything below it is on the disk of every in-sync
//! replica, and an acknowledged record survives the loss of all of them but one, power included
//! (Kafka counts log ends and leaves syncing to the page cache; Spate promises more).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::types::{LeaderEpoch, NodeId, Offset};

/// A replica's log: where it ends, and how much of it is synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub end: Offset,
    pub synced: Offset,
}

/// Fetches of one follower the lag check remembers.
const RECENT_FETCHES: usize = 4;

/// What the leader knows of one follower.
#[derive(Clone, Debug)]
struct Follower {
    /// How much of its log it has synced, as its last fetch said (`None` until it fetches).
    synced: Option<Offset>,
    /// When it last had synced everything the leader had: it stays in sync while this is
    /// within `replica.lag.time.max.ms`. Synced, not written: a follower whose disk stalls
    /// holds the high watermark back, so it must leave.
    caught_up_at: Instant,
    /// The leader's log end at its recent fetches, and when each was, oldest first: a follower
    /// that has synced past one has kept up since then. Kafka keeps the previous fetch only
    /// (`lastFetchLeaderLogEndOffset`), as its followers report what they fetched; these report
    /// what they synced, which trails what they fetched by a round or two while they fetch
    /// during their syncs (`broker::replica_fetcher`).
    recent_fetches: VecDeque<(Offset, Instant)>,
    /// Its log start, as its last fetch said.
    log_start: Offset,
    /// The leader's log start as last sent to it: a start that moved is news to a follower,
    /// which drops its segments below it.
    told_log_start: Offset,
}

/// A change of the in-sync set the leader asks the controller for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrChange {
    pub isr: Vec<NodeId>,
}

/// Why an `acks=all` produce is refused before it is appended (Kafka's NOT_ENOUGH_REPLICAS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotEnoughReplicas {
    pub in_sync: usize,
    pub min_insync: usize,
}

pub struct ReplicaSet {
    me: NodeId,
    epoch: LeaderEpoch,
    /// Where this leader's epoch starts in its log: a follower rejoins the in-sync set only
    /// once it has everything from before it (KIP-966's rule, as Kafka's `isFollowerInSync`).
    epoch_start: Offset,
    /// As the controller last committed it; the leader is always in it.
    isr: Vec<NodeId>,
    /// A change asked for and not answered yet. The high watermark counts the replicas it
    /// adds from the moment it is asked (Kafka's maximal in-sync set, `PendingExpandIsr`): one
    /// that joins must hold everything acknowledged until the commit, or a leader elected from
    /// it could lack what was acknowledged meanwhile.
    pending: Option<Vec<NodeId>>,
    min_insync: usize,
    lag_max: Duration,
    followers: BTreeMap<NodeId, Follower>,
    high_watermark: Offset,
}

impl ReplicaSet {
    /// Leader `me` of `replicas` in `epoch`, which starts at `epoch_start` (its log end when it
    /// became leader), with the in-sync set the controller committed and the high watermark it
    /// had (from before, or its checkpoint). Followers start caught up as of `now`: a new leader
    /// gives each the whole lag time to show it keeps up.
    pub fn new(
        me: NodeId,
        (epoch, epoch_start): (LeaderEpoch, Offset),
        replicas: &[NodeId],
        isr: Vec<NodeId>,
        (min_insync, lag_max): (usize, Duration),
        high_watermark: Offset,
        now: Instant,
    ) -> Self {
        assert!(isr.contains(&me), "leader {me} is not in its in-sync set {isr:?}");
        let mut set = Self {
            me,
            epoch,
            epoch_start,
            isr,
            pending: None,
            min_insync,
            lag_max,
            followers: BTreeMap::new(),
            high_watermark,
        };
        set.set_replicas(replicas, min_insync, now);
        set
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The replicas (this leader and its followers) and `min.insync.replicas`.
    pub fn sizes(&self) -> (usize, usize) {
        (self.followers.len() + 1, self.min_insync)
    }

    pub fn isr(&self) -> &[NodeId] {
        &self.isr
    }

    pub fn epoch(&self) -> LeaderEpoch {
        self.epoch
    }

    /// A fetch from `follower` at `follower_at` (its log end is the offset it fetches), while
    /// the leader's log is at `leader_at`. Answers the high watermark to send back.
    pub fn on_fetch(
        &mut self,
        follower: NodeId,
        follower_at: Position,
        leader_at: Position,
        now: Instant,
    ) -> Offset {
        if let Some(f) = self.followers.get_mut(&follower) {
            // This fetch counts among the recent ones: a follower synced to the leader's end
            // now is caught up now.
            f.recent_fetches.push_back((leader_at.end, now));
            while let Some(&(end, at)) = f.recent_fetches.front() {
                if follower_at.synced < end {
                    break;
                }
                f.caught_up_at = f.caught_up_at.max(at);
                f.recent_fetches.pop_front();
            }
            if f.recent_fetches.len() > RECENT_FETCHES {
                f.recent_fetches.pop_front();
            }
            f.synced = Some(follower_at.synced);
        }
        self.advance(leader_at.synced);
        self.high_watermark
    }

    /// A follower's log start as its fetch says; answers whether it moved.
    pub fn note_log_start(&mut self, follower: NodeId, log_start: Offset) -> bool {
        let Some(f) = self.followers.get_mut(&follower) else { return false };
        let moved = f.log_start != log_start;
        f.log_start = log_start;
        moved
    }

    /// The lowest log start of the in-sync followers (as their fetches said; 0 for one not
    /// heard yet), `None` when the leader is in sync alone: what a DeleteRecords waits for.
    pub fn in_sync_log_start(&self) -> Option<Offset> {
        (self.isr.iter())
            .filter(|r| **r != self.me)
            .map(|r| self.followers.get(r).map_or(Offset(0), |f| f.log_start))
            .min()
    }

    /// Whether `follower` has not been told the leader's log start `log_start` yet (a new
    /// leader tells every follower once); from now on it has been, by the answer this is asked
    /// for.
    pub fn tell_log_start(&mut self, follower: NodeId, log_start: Offset) -> bool {
        let Some(f) = self.followers.get_mut(&follower) else { return false };
        let news = f.told_log_start != log_start;
        f.told_log_start = log_start;
        news
    }

    /// The leader synced more of its log: the high watermark may follow.
    pub fn on_leader_synced(&mut self, leader_synced: Offset) -> Offset {
        self.advance(leader_synced);
        self.high_watermark
    }

    /// The high watermark: the least synced end over the in-sync replicas and those a pending
    /// change adds, while the committed set holds at least `min.insync.replicas`; it never goes
    /// back.
    fn advance(&mut self, leader_synced: Offset) {
        if self.isr.len() < self.min_insync {
            return;
        }
        let joining = self.pending.iter().flatten().filter(|r| !self.isr.contains(r));
        let mut least = leader_synced;
        for replica in self.isr.iter().chain(joining).filter(|r| **r != self.me) {
            // A counted replica not heard from yet holds the high watermark where it is.
            match self.followers.get(replica).and_then(|f| f.synced) {
                Some(synced) => least = least.min(synced),
                None => return,
            }
        }
        if least > self.high_watermark {
            self.high_watermark = least;
        }
    }

    /// Whether an `acks=all` produce may be appended now (Kafka checks before appending).
    pub fn check_acks_all(&self) -> Result<(), NotEnoughReplicas> {
        if self.isr.len() < self.min_insync {
            return Err(NotEnoughReplicas { in_sync: self.isr.len(), min_insync: self.min_insync });
        }
        Ok(())
    }

    /// The in-sync set the leader should ask for now, if it differs and no change is pending:
    /// followers that have not caught up within the lag time leave it; followers out of it that
    /// have synced everything below the high watermark and this epoch's start join it (Kafka's
    /// `maybeShrinkIsr` and `maybeExpandIsr`), if `eligible` (their broker is live as the
    /// metadata says, KIP-841: the controller refuses any other, and asking for one again and
    /// again would hold back every other change). The change is pending from here until
    /// [`Self::set_isr`] or [`Self::change_refused`].
    pub fn isr_change(
        &mut self,
        now: Instant,
        eligible: impl Fn(NodeId) -> bool,
    ) -> Option<IsrChange> {
        if self.pending.is_some() {
            return None;
        }
        let mut isr: Vec<NodeId> = (self.isr.iter().copied())
            .filter(|r| {
                let f = self.followers.get(r);
                *r == self.me
                    || f.is_some_and(|f| now.duration_since(f.caught_up_at) <= self.lag_max)
            })
            .collect();
        for (node, f) in &self.followers {
            let synced = f.synced.unwrap_or(Offset(0));
            let heard = f.synced.is_some();
            let in_sync = heard && synced >= self.high_watermark && synced >= self.epoch_start;
            let lagging = now.duration_since(f.caught_up_at) > self.lag_max;
            if !isr.contains(node) && in_sync && !lagging && eligible(*node) {
                isr.push(*node);
            }
        }
        isr.sort_unstable();
        let mut current = self.isr.clone();
        current.sort_unstable();
        if isr == current {
            return None;
        }
        self.pending = Some(isr.clone());
        Some(IsrChange { isr })
    }

    /// The controller committed a new in-sync set (from this leader's request or a fencing):
    /// any pending change is answered by it.
    pub fn set_isr(&mut self, isr: Vec<NodeId>, leader_synced: Offset) {
        assert!(isr.contains(&self.me), "leader {} left its own in-sync set {isr:?}", self.me);
        self.isr = isr;
        self.pending = None;
        self.advance(leader_synced);
    }

    /// The topic's `min.insync.replicas` changed (an administrator's change, in the same
    /// partition epoch): `acks=all` and the high watermark follow it at once.
    pub fn set_min_insync(&mut self, min_insync: usize, leader_synced: Offset) {
        if self.min_insync != min_insync {
            self.min_insync = min_insync;
            self.advance(leader_synced);
        }
    }

    /// The controller committed other replicas (a reassignment, KIP-455): a replica added is a
    /// follower not heard from yet, given the lag time from `now` to catch up; one removed is
    /// forgotten. `min_insync` is resolved against the replica count anew.
    pub fn set_replicas(&mut self, replicas: &[NodeId], min_insync: usize, now: Instant) {
        self.followers.retain(|node, _| replicas.contains(node));
        for replica in replicas.iter().filter(|r| **r != self.me) {
            self.followers.entry(*replica).or_insert(Follower {
                synced: None,
                caught_up_at: now,
                recent_fetches: VecDeque::with_capacity(RECENT_FETCHES + 1),
                log_start: Offset(0),
                told_log_start: Offset(0),
            });
        }
        self.min_insync = min_insync;
    }

    /// Whether a change was asked and not answered yet.
    pub fn has_pending_change(&self) -> bool {
        self.pending.is_some()
    }

    /// The controller refused the pending change (or did not answer): ask again later.
    pub fn change_refused(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER: NodeId = NodeId(1);
    const F2: NodeId = NodeId(2);
    const F3: NodeId = NodeId(3);
    const LAG: Duration = Duration::from_secs(30);

    fn at(end: u64, synced: u64) -> Position {
        Position { end: Offset(end), synced: Offset(synced) }
    }

    /// Leader 1 of replicas 1 to 3, all in sync, epoch 5 starting at offset 10.
    fn leader(now: Instant) -> ReplicaSet {
        let epoch = (LeaderEpoch(5), Offset(10));
        let limits = (2, LAG);
        ReplicaSet::new(
            LEADER,
            epoch,
            &[LEADER, F2, F3],
            vec![LEADER, F2, F3],
            limits,
            Offset(10),
            now,
        )
    }

    /// A follower that fetches with nothing new still learns the leader's log start once it
    /// moves (the offsets log's compaction), and only then.
    #[test]
    fn each_follower_is_told_a_moved_log_start_once() {
        let mut set = leader(Instant::now());
        assert!(!set.tell_log_start(F2, Offset(0)), "a log start at 0 is what it knows");
        assert!(set.tell_log_start(F2, Offset(40)));
        assert!(!set.tell_log_start(F2, Offset(40)), "told already");
        assert!(set.tell_log_start(F3, Offset(40)), "each follower is told");
        assert!(!set.tell_log_start(NodeId(9), Offset(40)), "not a replica");
    }

    #[test]
    fn the_high_watermark_is_what_every_in_sync_replica_has_synced() {
        let now = Instant::now();
        let mut set = leader(now);
        // Follower 2 has written up to 20 but synced only 15; follower 3 has synced 18.
        assert_eq!(set.on_fetch(F2, at(20, 15), at(20, 20), now), Offset(10), "3 not heard yet");
        assert_eq!(set.on_fetch(F3, at(18, 18), at(20, 20), now), Offset(15));
        // The leader's own synced end bounds it too, and it never goes back.
        assert_eq!(set.on_fetch(F2, at(20, 20), at(22, 16), now), Offset(16));
        assert_eq!(set.on_leader_synced(Offset(12)), Offset(16));
        assert_eq!(set.on_leader_synced(Offset(22)), Offset(18));
    }

    #[test]
    fn below_min_insync_acks_all_is_refused_and_the_high_watermark_waits() {
        let now = Instant::now();
        let mut set = leader(now);
        set.set_isr(vec![LEADER], Offset(10));
        let refused = NotEnoughReplicas { in_sync: 1, min_insync: 2 };
        assert_eq!(set.check_acks_all(), Err(refused));
        // The leader alone has synced 30: nothing is acknowledged on one copy.
        assert_eq!(set.on_leader_synced(Offset(30)), Offset(10));
        set.set_isr(vec![LEADER, F2], Offset(30));
        assert_eq!(set.check_acks_all(), Ok(()));
        assert_eq!(set.on_fetch(F2, at(30, 30), at(30, 30), now), Offset(30));
    }

    /// An administrator's new `min.insync.replicas` holds at once: raised past the in-sync
    /// set, `acks=all` is refused; lowered to it again, the high watermark catches up.
    #[test]
    fn a_changed_min_insync_holds_at_once() {
        let now = Instant::now();
        let mut set = leader(now);
        set.set_isr(vec![LEADER, F2], Offset(10));
        assert_eq!(set.check_acks_all(), Ok(()));
        set.set_min_insync(3, Offset(10));
        let refused = NotEnoughReplicas { in_sync: 2, min_insync: 3 };
        assert_eq!(set.check_acks_all(), Err(refused));
        assert_eq!(set.on_fetch(F2, at(30, 30), at(30, 30), now), Offset(10), "held below 3");
        set.set_min_insync(2, Offset(30));
        assert_eq!(set.check_acks_all(), Ok(()));
        assert_eq!(set.high_watermark(), Offset(30), "moved as soon as it was lowered");
    }

    /// A DeleteRecords waits for the lowest log start the in-sync followers report.
    #[test]
    fn the_in_sync_followers_lowest_log_start_is_known() {
        let mut set = leader(Instant::now());
        assert_eq!(set.in_sync_log_start(), Some(Offset(0)), "none heard yet");
        assert!(set.note_log_start(F2, Offset(40)));
        assert!(!set.note_log_start(F2, Offset(40)), "the same again");
        assert_eq!(set.in_sync_log_start(), Some(Offset(0)), "follower 3 is behind");
        set.note_log_start(F3, Offset(50));
        assert_eq!(set.in_sync_log_start(), Some(Offset(40)));
        set.set_isr(vec![LEADER, F3], Offset(10));
        assert_eq!(set.in_sync_log_start(), Some(Offset(50)), "only the in-sync set counts");
        set.set_isr(vec![LEADER], Offset(10));
        assert_eq!(set.in_sync_log_start(), None, "the leader alone");
    }

    #[test]
    fn a_follower_that_falls_behind_leaves_and_rejoins_once_it_has_caught_up() {
        let start = Instant::now();
        let mut set = leader(start);
        set.on_fetch(F2, at(10, 10), at(10, 10), start);
        set.on_fetch(F3, at(10, 10), at(10, 10), start);
        // The leader takes writes; follower 3 keeps fetching the leader's end, follower 2 stops.
        let later = start + LAG + Duration::from_secs(1);
        set.on_fetch(F3, at(40, 40), at(40, 40), later);
        let change = set.isr_change(later, |_| true).expect("follower 2 leaves");
        assert_eq!(set.isr_change(later, |_| true), None, "one change at a time");
        assert_eq!(change.isr, vec![LEADER, F3]);
        set.set_isr(change.isr, Offset(40));
        assert_eq!(set.high_watermark(), Offset(40));
        // Follower 2 comes back with everything but not all of it synced: not yet.
        let back = later + Duration::from_secs(1);
        set.on_fetch(F2, at(40, 35), at(40, 40), back);
        assert_eq!(set.isr_change(back, |_| true), None);
        set.on_fetch(F2, at(40, 40), at(40, 40), back);
        assert_eq!(set.isr_change(back, |_| true).map(|c| c.isr), Some(vec![LEADER, F2, F3]));
    }

    #[test]
    fn a_replica_being_added_holds_the_high_watermark_until_the_change_is_answered() {
        let now = Instant::now();
        let mut set = leader(now);
        set.set_isr(vec![LEADER, F2], Offset(10));
        set.on_fetch(F3, at(10, 10), at(10, 10), now);
        assert_eq!(set.on_fetch(F2, at(10, 10), at(10, 10), now), Offset(10));
        let change = set.isr_change(now, |_| true).expect("follower 3 joins");
        assert_eq!(change.isr, vec![LEADER, F2, F3]);
        // While the controller decides, what follower 3 lacks is not acknowledged: a leader
        // elected from the new set must hold it.
        assert_eq!(set.on_fetch(F2, at(20, 20), at(20, 20), now), Offset(10));
        assert_eq!(set.on_fetch(F3, at(20, 20), at(20, 20), now), Offset(20));
        // Refused (another change came first): the set is as committed.
        set.change_refused();
        assert_eq!(set.on_fetch(F2, at(30, 30), at(30, 30), now), Offset(30));
        // A follower never heard from is not proposed, whatever the high watermark.
        let mut fresh = leader(now);
        fresh.set_isr(vec![LEADER, F2], Offset(10));
        assert_eq!(fresh.isr_change(now, |_| true), None);
    }

    /// A caught-up follower whose broker the metadata has fenced is not proposed (the controller
    /// would refuse it, KIP-841), so another follower's change is not held back by it.
    #[test]
    fn a_follower_on_a_fenced_broker_is_not_proposed() {
        let now = Instant::now();
        let mut set = leader(now);
        set.set_isr(vec![LEADER], Offset(10));
        set.on_fetch(F2, at(10, 10), at(10, 10), now);
        set.on_fetch(F3, at(10, 10), at(10, 10), now);
        let change = set.isr_change(now, |node| node != F3).expect("follower 2 joins alone");
        assert_eq!(change.isr, vec![LEADER, F2]);
    }

    /// A follower that fetches while it syncs reports, at each fetch, what it had fetched two
    /// fetches before: it keeps up, and stays in sync however long the leader keeps moving. One
    /// whose synced end trails further than the fetches remembered leaves once the lag time
    /// has passed.
    #[test]
    fn a_follower_whose_syncs_trail_its_fetches_by_two_rounds_stays_in_sync() {
        let start = Instant::now();
        let mut set = leader(start);
        let mut now = start;
        let mut leader_ends = vec![10u64, 10, 10];
        for step in 0..100u64 {
            now += Duration::from_secs(1);
            let leader_end = 20 + 10 * step;
            leader_ends.push(leader_end);
            let two_before = leader_ends[leader_ends.len() - 3];
            let far_behind = leader_ends[leader_ends.len().saturating_sub(RECENT_FETCHES + 3)];
            set.on_fetch(F2, at(leader_end - 10, two_before), at(leader_end, leader_end), now);
            set.on_fetch(F3, at(leader_end - 10, far_behind), at(leader_end, leader_end), now);
        }
        let change = set.isr_change(now, |_| true);
        assert_eq!(change, Some(IsrChange { isr: vec![LEADER, F2] }), "F2 kept up, F3 did not");
    }

    #[test]
    fn a_follower_that_keeps_up_with_a_moving_leader_stays_in_sync() {
        let start = Instant::now();
        let mut set = leader(start);
        // Each fetch reaches where the leader was at the previous one, never its current end:
        // it keeps up, as Kafka counts it.
        let mut now = start;
        for step in 0..100u64 {
            now += Duration::from_secs(1);
            let leader_end = 20 + 10 * step;
            set.on_fetch(F2, at(leader_end - 10, leader_end - 10), at(leader_end, leader_end), now);
            set.on_fetch(F3, at(leader_end, leader_end), at(leader_end, leader_end), now);
        }
        assert_eq!(set.isr_change(now, |_| true), None);
    }
}
