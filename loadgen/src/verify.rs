//! `--verify`: every record carries its partition's sequence number, and the consumer checks
//! that each partition holds 0, 1, 2, ... with no gap, duplicate or reordering.

/// Bytes at the start of every value in verify mode: sequence number and send time.
pub const STAMP_BYTES: usize = 16;

/// Writes the stamp into the first bytes of a value.
pub fn stamp(value: &mut [u8], seq: u64, sent_ns: u64) {
    value[..8].copy_from_slice(&seq.to_le_bytes());
    value[8..16].copy_from_slice(&sent_ns.to_le_bytes());
}

/// Wall-clock nanoseconds since the Unix epoch: producers and consumers of one run share the
/// clock, so the difference is the end-to-end latency.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Reads the send time back.
pub fn sent_ns_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(8..16)?.try_into().ok()?))
}

/// Reads the sequence number back; `None` when the value is too short to carry one.
pub fn seq_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(..8)?.try_into().ok()?))
}

/// What one partition's consumer saw against what it expected.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SequenceCheck {
    expected: u64,
    pub records: u64,
    /// Sequence numbers skipped (missing from the log).
    pub missing: u64,
    /// Records whose sequence number was already seen or is behind: duplicates or reordering.
    pub behind: u64,
    pub unreadable: u64,
}

impl SequenceCheck {
    pub fn observe(&mut self, seq: Option<u64>) {
        self.records += 1;
        match seq {
            None => self.unreadable += 1,
            Some(seq) if seq == self.expected => self.expected += 1,
            Some(seq) if seq > self.expected => {
                self.missing += seq - self.expected;
                self.expected = seq + 1;
            }
            Some(_) => self.behind += 1,
        }
    }

    /// Also counts as missing everything acknowledged but never read.
    pub fn finish(&mut self, acknowledged: u64) {
        self.missing += acknowledged.saturating_sub(self.expected);
    }

    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.behind == 0 && self.unreadable == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(seqs: &[u64], acknowledged: u64) -> SequenceCheck {
        let mut check = SequenceCheck::default();
        seqs.iter().for_each(|s| check.observe(Some(*s)));
        check.finish(acknowledged);
        check
    }

    #[test]
    fn a_clean_sequence_passes() {
        assert!(check(&[0, 1, 2, 3], 4).is_clean());
    }

    #[test]
    fn gaps_duplicates_reordering_and_losses_are_counted() {
        assert_eq!(check(&[0, 1, 4, 5], 6).missing, 2);
        assert_eq!(check(&[0, 1, 1, 2], 3).behind, 1);
        assert_eq!(check(&[0, 2, 1, 3], 4).behind, 1);
        assert_eq!(check(&[0, 1], 5).missing, 3, "acknowledged but never read");
    }

    #[test]
    fn stamps_round_trip() {
        let mut value = vec![0u8; 32];
        stamp(&mut value, 77, 123);
        assert_eq!(seq_of(&value), Some(77));
        assert_eq!(sent_ns_of(&value), Some(123));
        assert_eq!(seq_of(&value[..4]), None);
    }
}
