//! Retention and roll decisions, as a pure function of a partition's segments and the clock.
//!
//! Kafka's rules: a sealed segment is deleted when its newest record is older than
//! `retention.ms`, or while deleting it keeps the partition at or above `retention.bytes`;
//! deletion always takes the oldest segments first and never the active one. The active segment
//! rolls when it is older than `segment.ms`, or when everything in it has expired (so the next
//! check can delete it).

use crate::config::TopicConfig;

/// The facts retention needs about one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentFacts {
    pub size_bytes: u64,
    /// Largest record timestamp in the segment; `i64::MIN` when it is empty.
    pub max_timestamp: i64,
    /// Wall-clock ms when the segment received its first entry; `None` when empty.
    pub first_write_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// How many of the oldest sealed segments to delete.
    pub delete_oldest: usize,
    pub roll_active: bool,
}

/// Decides what to delete and whether to roll. `sealed` is oldest first.
pub fn plan(
    sealed: &[SegmentFacts],
    active: SegmentFacts,
    config: &TopicConfig,
    now_ms: i64,
) -> RetentionPlan {
    let expired = |s: &SegmentFacts| {
        config.retention_ms >= 0
            && s.max_timestamp != i64::MIN
            && now_ms.saturating_sub(s.max_timestamp) > config.retention_ms
    };
    let by_time = sealed.iter().take_while(|s| expired(s)).count();

    let mut by_size = 0;
    if config.retention_bytes >= 0 {
        let limit = config.retention_bytes as u64;
        let mut total: u64 = sealed.iter().map(|s| s.size_bytes).sum::<u64>() + active.size_bytes;
        for segment in sealed {
            if total - segment.size_bytes < limit {
                break;
            }
            total -= segment.size_bytes;
            by_size += 1;
        }
    }

    let active_is_old = active
        .first_write_ms
        .is_some_and(|first| now_ms.saturating_sub(first) >= config.segment_ms);
    let active_expired = active.size_bytes > 0 && expired(&active);
    RetentionPlan {
        delete_oldest: by_time.max(by_size),
        roll_active: active.size_bytes > 0 && (active_is_old || active_expired),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(size_bytes: u64, max_timestamp: i64) -> SegmentFacts {
        SegmentFacts { size_bytes, max_timestamp, first_write_ms: Some(max_timestamp) }
    }

    fn config(retention_ms: i64, retention_bytes: i64) -> TopicConfig {
        TopicConfig {
            retention_ms,
            retention_bytes,
            segment_ms: 1_000_000,
            ..TopicConfig::default()
        }
    }

    #[test]
    fn time_retention_deletes_the_expired_prefix_only() {
        let sealed = [segment(10, 100), segment(10, 500), segment(10, 200), segment(10, 900)];
        let active = segment(10, 950);
        let plan = plan(&sealed, active, &config(300, -1), 1000);
        // 100 and 500 are older than 1000 - 300 = 700; 200 is too, but stands behind 900? No:
        // deletion stops at the first segment that is not expired, which is the fourth.
        assert_eq!(plan.delete_oldest, 3);
        assert!(!plan.roll_active);
    }

    #[test]
    fn size_retention_keeps_the_partition_at_or_above_the_limit() {
        let sealed = [segment(100, 0), segment(100, 0), segment(100, 0)];
        let active = segment(50, 0);
        // 350 bytes, limit 200: deleting two leaves 150 < 200, so only one goes.
        assert_eq!(plan(&sealed, active, &config(-1, 200), 10).delete_oldest, 1);
        assert_eq!(plan(&sealed, active, &config(-1, 150), 10).delete_oldest, 2);
        assert_eq!(plan(&sealed, active, &config(-1, 0), 10).delete_oldest, 3);
        assert_eq!(plan(&sealed, active, &config(-1, -1), 10).delete_oldest, 0);
    }

    #[test]
    fn the_active_segment_rolls_when_old_or_expired_but_never_when_empty() {
        let old =
            SegmentFacts { size_bytes: 10, max_timestamp: 5_000_000, first_write_ms: Some(0) };
        assert!(plan(&[], old, &config(-1, -1), 1_000_000).roll_active);
        let expired = segment(10, 0);
        assert!(plan(&[], expired, &config(10, -1), 100).roll_active);
        let empty = SegmentFacts { size_bytes: 0, max_timestamp: i64::MIN, first_write_ms: None };
        assert!(!plan(&[], empty, &config(0, 0), i64::MAX).roll_active);
    }

    #[test]
    fn infinite_retention_deletes_nothing() {
        let sealed = [segment(1 << 30, 0); 4];
        let plan = plan(&sealed, segment(1, 0), &config(-1, -1), i64::MAX);
        assert_eq!(plan.delete_oldest, 0);
    }
}
