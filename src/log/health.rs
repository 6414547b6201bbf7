//! Whether the broker's disk takes writes, as its logs find it: one per broker, shared by every
//! shard's logs, which record what their writes met, and read by the broker's heartbeat
//! (`cluster/membership.rs`).
//!
//! Kafka takes a log directory that fails a write offline, and a broker with none left halts
//! (KIP-112); in KRaft the controller then moves the directory's leaderships and takes its
//! replicas out of the in-sync sets (KIP-858). A Spate broker has one data directory and stays up
//! (a full disk is not fatal to it): its heartbeat says its storage is failing, and the controller
//! fences it meanwhile. Otherwise a follower with a full disk would hold back the high watermark
//! of every partition it follows until `replica.lag.time.max.ms` dropped it, and a leader's
//! partitions would refuse every append while their other replicas have room.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct StorageHealth {
    /// A write was refused for lack of space (or quota), and none has been taken since.
    refused: AtomicBool,
    /// A log failed until restart: a write failed other than for space, or an fdatasync failed.
    failed: AtomicBool,
}

impl StorageHealth {
    /// A write found no space (or quota).
    pub fn write_refused(&self) {
        self.refused.store(true, Ordering::Relaxed);
    }

    /// A write was taken after a refusal: there is space again. A fenced broker writes nothing
    /// of its logs, so its heartbeat tries a write of its own (`membership.rs`).
    pub fn write_taken(&self) {
        self.refused.store(false, Ordering::Relaxed);
    }

    /// A log failed until the broker restarts.
    pub fn log_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Why the storage counts as failing, if it does.
    pub fn failing(&self) -> Option<&'static str> {
        if self.failed.load(Ordering::Relaxed) {
            Some("a log failed a write or an fdatasync")
        } else if self.refused.load(Ordering::Relaxed) {
            Some("a write found no space")
        } else {
            None
        }
    }

    /// Whether the only failure is a refusal for lack of space, which a later write may end.
    pub fn only_refused(&self) -> bool {
        !self.failed.load(Ordering::Relaxed) && self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_fails_the_storage_until_a_write_is_taken_and_a_failed_log_for_good() {
        let health = StorageHealth::default();
        assert_eq!(health.failing(), None);
        health.write_refused();
        assert_eq!(health.failing(), Some("a write found no space"));
        assert!(health.only_refused());
        health.write_taken();
        assert_eq!(health.failing(), None, "space again");
        health.log_failed();
        health.write_taken();
        assert_eq!(health.failing(), Some("a log failed a write or an fdatasync"));
        assert!(!health.only_refused());
    }
}
