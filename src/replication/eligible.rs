//! Eligible leader replicas (KIP-966, part 1): the replicas out of the in-sync set that still
//! hold everything below the high watermark, and may therefore lead when no in-sync replica is
//! live.
//!
//! The rule rests on one of the leader's (`leader.rs`): the high watermark does not move while
//! the in-sync set is smaller than `min.insync.replicas`. A replica that leaves the set while it
//! is (or becomes) that small held everything up to the high watermark when it left, and the
//! high watermark has not moved since; so it stays eligible until the set is back to
//! `min.insync.replicas`, when the high watermark moves again and eligibility ends. A replica
//! reports only what it has synced (`leader.rs`), so an unclean shutdown does not cost it its
//! eligibility, unlike Kafka's, which KIP-966 takes out of the set for one.

use crate::types::NodeId;

/// The eligible leader replicas once the in-sync set goes from `isr_before` to `isr_after`:
/// none when the new set has `min_insync` replicas, else the eligible ones before and the
/// replicas that left the set, less those in it now, in that order, each once.
pub fn eligible_after(
    isr_before: &[NodeId],
    elr_before: &[NodeId],
    isr_after: &[NodeId],
    min_insync: usize,
) -> Vec<NodeId> {
    if isr_after.len() >= min_insync {
        return Vec::new();
    }
    let mut eligible: Vec<NodeId> = Vec::new();
    for replica in elr_before.iter().chain(isr_before) {
        if !isr_after.contains(replica) && !eligible.contains(replica) {
            eligible.push(*replica);
        }
    }
    eligible
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[i32]) -> Vec<NodeId> {
        ids.iter().map(|id| NodeId(*id)).collect()
    }

    #[test]
    fn replicas_that_leave_a_set_below_min_insync_stay_eligible_until_it_is_whole_again() {
        let min = 2;
        // Leaving a set that keeps min.insync.replicas: the high watermark moves on, not
        // eligible.
        assert_eq!(eligible_after(&nodes(&[1, 2, 3]), &[], &nodes(&[1, 2]), min), nodes(&[]));
        // Leaving it below: eligible.
        assert_eq!(eligible_after(&nodes(&[1, 2]), &[], &nodes(&[1]), min), nodes(&[2]));
        // The last in-sync replica replaced by an eligible one (its election): the old one is
        // eligible, the new one in sync.
        assert_eq!(eligible_after(&nodes(&[1]), &nodes(&[2]), &nodes(&[2]), min), nodes(&[1]));
        // One that catches up rejoins the set; once it is whole again, none is eligible.
        assert_eq!(eligible_after(&nodes(&[1]), &nodes(&[2, 3]), &nodes(&[1, 2]), min), nodes(&[]));
        assert_eq!(eligible_after(&nodes(&[1]), &nodes(&[2, 3]), &nodes(&[1, 2]), 3), nodes(&[3]));
        // min.insync.replicas 1: the set is never below it.
        assert_eq!(eligible_after(&nodes(&[1, 2]), &[], &nodes(&[1]), 1), nodes(&[]));
    }
}
