//! Where a follower's log stops agreeing with its leader's, decided from the two leader-epoch
//! caches alone (Kafka's truncate-on-fetch, KIP-320 and KIP-595, after KIP-101 and KIP-279).
//!
//! A follower fetches with the offset it wants next (its log end) and the epoch of its last
//! entry. The leader looks that epoch up in its own cache ([`LeaderEpochs::end_offset_for`]):
//! the largest epoch it has at or below it, and where that epoch ends in its log. If that epoch
//! is older, or ends before the fetch offset, the two logs diverge there, and the leader answers
//! with that epoch and end instead of records ([`check_fetch`]). The follower looks the same
//! epoch up in its own cache and truncates to the smaller end ([`truncation`]); if it never had
//! that epoch, it truncates to where its own older epoch ends and asks again.
//!
//! The cases of `3_log_divergence.md` in Jack Vanlightly's kafka-tlaplus descriptions (A to G)
//! are the unit tests below.

use crate::log::epochs::LeaderEpochs;
use crate::types::{LeaderEpoch, Offset};

/// An epoch and where it ends in a log (exclusive): Kafka's `EpochEndOffset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEnd {
    pub epoch: LeaderEpoch,
    pub end_offset: Offset,
}

/// What a leader makes of a follower's fetch position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchCheck {
    /// The follower's log agrees with the leader's up to the fetch offset: send what follows.
    Agrees,
    /// The logs diverge: the follower truncates ([`truncation`]) and fetches again. Kafka's
    /// `divergingEpoch` in the fetch response.
    Diverging(EpochEnd),
    /// The fetch offset is outside the leader's log (past its end, or below its start), or the
    /// follower's last epoch is newer than any the leader has: Kafka's OFFSET_OUT_OF_RANGE, on
    /// which the follower truncates to no further than the leader's end, or starts at its log
    /// start.
    OutOfRange,
}

/// The leader's check of a follower's fetch at `fetch_offset` whose last entry is of
/// `last_fetched_epoch` (`None` for an empty log, or a follower that knows no epoch), against
/// the leader's log `log_start..log_end` and epoch cache.
pub fn check_fetch(
    epochs: &LeaderEpochs,
    (log_start, log_end): (Offset, Offset),
    fetch_offset: Offset,
    last_fetched_epoch: Option<LeaderEpoch>,
) -> FetchCheck {
    if let Some(last) = last_fetched_epoch {
        match epochs.end_offset_for(last, log_end) {
            Some((epoch, end_offset)) if epoch < last || end_offset < fetch_offset => {
                return FetchCheck::Diverging(EpochEnd { epoch, end_offset });
            }
            Some(_) => {}
            // An epoch newer than any the leader had (epoch fencing keeps a follower of a newer
            // leader away from a deposed one), or a leader that knows no epoch at all.
            None => return FetchCheck::OutOfRange,
        }
    }
    if fetch_offset < log_start || fetch_offset > log_end {
        return FetchCheck::OutOfRange;
    }
    FetchCheck::Agrees
}

/// Where a follower truncates its log (exclusive), and whether that is the end of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub offset: Offset,
    /// False when the follower never had the leader's epoch: it truncated to where its own
    /// older epoch ends, and fetches again with that epoch as its last (Kafka's
    /// `truncationCompleted = false`).
    pub complete: bool,
}

/// The follower's truncation after a fetch answered `diverging`, from its own epoch cache and
/// log end (Kafka's `AbstractFetcherThread.getOffsetTruncationState`).
pub fn truncation(epochs: &LeaderEpochs, log_end: Offset, diverging: EpochEnd) -> Truncation {
    let complete = |offset: Offset| Truncation { offset: offset.min(log_end), complete: true };
    match epochs.end_offset_for(diverging.epoch, log_end) {
        // The follower never had that epoch: cut back to where its own latest older one ends.
        Some((epoch, end)) if epoch != diverging.epoch => {
            Truncation { offset: end.min(log_end), complete: false }
        }
        Some((_, end)) => complete(end.min(diverging.end_offset)),
        // No epochs to compare (an empty log): the leader's end for the epoch is the bound.
        None => complete(diverging.end_offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::epochs::EpochStart;

    /// A log as the epochs of its entries, one letter each: `[1, 1, 2]` holds offsets 0 and 1
    /// in epoch 1 and offset 2 in epoch 2. `current` is the epoch the replica is in now (a
    /// leader starts its epoch at its log end, before it appends anything in it).
    struct Replica {
        epochs: LeaderEpochs,
        end: Offset,
    }

    fn replica(entries: &[i32], current: Option<i32>) -> Replica {
        let mut starts: Vec<EpochStart> = Vec::new();
        for (offset, epoch) in entries.iter().enumerate() {
            if starts.last().is_none_or(|s| s.epoch.0 != *epoch) {
                let start =
                    EpochStart { epoch: LeaderEpoch(*epoch), start_offset: Offset(offset as u64) };
                starts.push(start);
            }
        }
        let end = Offset(entries.len() as u64);
        if let Some(epoch) = current {
            starts.push(EpochStart { epoch: LeaderEpoch(epoch), start_offset: end });
        }
        Replica { epochs: LeaderEpochs::from_entries(&starts), end }
    }

    /// The follower fetches from the leader once; answers where it truncates (None when the
    /// logs agree), following incomplete truncations with another fetch as Kafka does.
    fn converge(leader: &Replica, follower: &[i32]) -> Option<u64> {
        let mut follower = replica(follower, None);
        let mut truncated = None;
        for _ in 0..10 {
            let last = follower.epochs.latest().map(|e| e.epoch);
            let check = check_fetch(&leader.epochs, (Offset(0), leader.end), follower.end, last);
            let FetchCheck::Diverging(diverging) = check else {
                assert_eq!(check, FetchCheck::Agrees);
                return truncated;
            };
            let cut = truncation(&follower.epochs, follower.end, diverging);
            follower.epochs.truncate_from_end(cut.offset);
            follower.end = cut.offset;
            truncated = Some(cut.offset.0);
        }
        panic!("no agreement after ten fetches");
    }

    #[test]
    fn a_follower_behind_in_the_same_epoch_or_before_a_newer_one_keeps_its_log() {
        // Case A: the leader has more of epoch 1.
        assert_eq!(converge(&replica(&[1, 1, 1, 1], Some(2)), &[1, 1]), None);
        // Case B: the leader has more, of a newer epoch.
        assert_eq!(converge(&replica(&[1, 1, 2, 2], Some(3)), &[1, 1]), None);
        // An empty follower, and one equal to the leader.
        assert_eq!(converge(&replica(&[1, 1, 2], Some(3)), &[]), None);
        assert_eq!(converge(&replica(&[1, 1, 2], Some(3)), &[1, 1, 2]), None);
    }

    #[test]
    fn a_follower_ahead_or_forked_truncates_where_the_logs_part() {
        // Case C: the follower has more of epoch 1 than the new leader.
        let leader = replica(&[1, 1], Some(2));
        let check =
            check_fetch(&leader.epochs, (Offset(0), leader.end), Offset(4), Some(LeaderEpoch(1)));
        let diverging = EpochEnd { epoch: LeaderEpoch(1), end_offset: Offset(2) };
        assert_eq!(check, FetchCheck::Diverging(diverging));
        assert_eq!(converge(&leader, &[1, 1, 1, 1]), Some(2));
        // Case D: the follower has entries of an epoch the leader never had, after its own.
        assert_eq!(converge(&replica(&[1, 1], Some(3)), &[1, 1, 2, 2]), Some(2));
        // Case E: each forked under an epoch of its own.
        assert_eq!(converge(&replica(&[1, 1, 3, 3], Some(4)), &[1, 1, 2, 2]), Some(2));
        // Case F: the leader's fork is more of epoch 1, the follower's a newer epoch earlier.
        assert_eq!(converge(&replica(&[1, 1], Some(3)), &[1, 2, 2]), Some(1));
        // Case G: no epoch in common: the follower's log goes whole.
        assert_eq!(converge(&replica(&[1], Some(3)), &[2, 2]), Some(0));
    }

    #[test]
    fn a_follower_that_never_had_the_leaders_epoch_truncates_in_steps() {
        // The leader answers epoch 2 (its largest at or below the follower's 3); the follower
        // never had 2: it cuts back to where its epoch 1 ends, then asks again with epoch 1.
        let leader = replica(&[1, 1, 2, 2, 2], Some(4));
        let follower = replica(&[1, 1, 1, 3, 3], None);
        let last = Some(LeaderEpoch(3));
        let check = check_fetch(&leader.epochs, (Offset(0), leader.end), follower.end, last);
        let diverging = EpochEnd { epoch: LeaderEpoch(2), end_offset: Offset(5) };
        assert_eq!(check, FetchCheck::Diverging(diverging));
        let step = truncation(&follower.epochs, follower.end, diverging);
        assert_eq!(step, Truncation { offset: Offset(3), complete: false });
        assert_eq!(converge(&leader, &[1, 1, 1, 3, 3]), Some(2));
    }

    #[test]
    fn fetches_outside_the_leaders_log_are_out_of_range() {
        let leader = replica(&[1, 1, 1], Some(2));
        let log = (Offset(1), leader.end);
        assert_eq!(check_fetch(&leader.epochs, log, Offset(0), None), FetchCheck::OutOfRange);
        assert_eq!(check_fetch(&leader.epochs, log, Offset(4), None), FetchCheck::OutOfRange);
        assert_eq!(check_fetch(&leader.epochs, log, Offset(3), None), FetchCheck::Agrees);
        // An epoch newer than the leader's own: out of range, as Kafka answers it.
        let newer = check_fetch(&leader.epochs, log, Offset(3), Some(LeaderEpoch(9)));
        assert_eq!(newer, FetchCheck::OutOfRange);
    }
}
