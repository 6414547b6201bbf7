//! Idempotent producers: per partition, each producer id's epoch and its last few batches.
//!
//! A producer with an id numbers its batches per partition; a batch it retries (because an
//! acknowledgement was lost) carries the same sequence, and the partition answers it with the
//! offset it was first written at instead of writing it twice. A gap in the sequence or a stale
//! epoch is refused. The table is rebuilt on open from the newest entries of the log, whose
//! headers carry producer id, epoch and base sequence.

use std::collections::{HashMap, VecDeque};

use crate::record::BatchMeta;

/// Batches remembered per producer: Kafka clients keep at most 5 in flight per partition.
pub const CACHED_BATCHES: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CachedBatch {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: u64,
    next_offset: u64,
}

#[derive(Debug, Default)]
struct ProducerState {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
}

/// What to do with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New data: append it.
    Append,
    /// Already in the log at these offsets: acknowledge them again.
    Duplicate { base_offset: u64, next_offset: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SequenceError {
    /// OUT_OF_ORDER_SEQUENCE_NUMBER.
    OutOfOrder(String),
    /// INVALID_PRODUCER_EPOCH.
    StaleEpoch(String),
}

impl std::fmt::Display for SequenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OutOfOrder(why) | Self::StaleEpoch(why) => f.write_str(why),
        }
    }
}

/// The sequence of a batch's last record: sequences wrap from `i32::MAX` to 0.
fn last_sequence(meta: &BatchMeta) -> i32 {
    let last = i64::from(meta.base_sequence) + i64::from(meta.record_count) - 1;
    (last % (i64::from(i32::MAX) + 1)) as i32
}

fn following(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

#[derive(Debug, Default)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerState>,
}

impl ProducerTable {
    pub fn check(&self, meta: &BatchMeta) -> Result<SequenceCheck, SequenceError> {
        if meta.producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        // Nothing known (a new producer, or one older than what was rebuilt): accept any start.
        let Some(state) = self.producers.get(&meta.producer_id) else {
            return Ok(SequenceCheck::Append);
        };
        if meta.producer_epoch < state.epoch {
            return Err(SequenceError::StaleEpoch(format!(
                "producer {} epoch {} is older than the current epoch {}",
                meta.producer_id, meta.producer_epoch, state.epoch
            )));
        }
        if meta.producer_epoch > state.epoch {
            if meta.base_sequence == 0 {
                return Ok(SequenceCheck::Append);
            }
            return Err(SequenceError::OutOfOrder(format!(
                "producer {} starts epoch {} at sequence {}, not 0",
                meta.producer_id, meta.producer_epoch, meta.base_sequence
            )));
        }
        let last = last_sequence(meta);
        let cached = state
            .batches
            .iter()
            .find(|b| b.first_sequence == meta.base_sequence && b.last_sequence == last);
        if let Some(batch) = cached {
            return Ok(SequenceCheck::Duplicate {
                base_offset: batch.base_offset,
                next_offset: batch.next_offset,
            });
        }
        let expected =
            state.batches.back().map_or(meta.base_sequence, |b| following(b.last_sequence));
        if meta.base_sequence == expected {
            return Ok(SequenceCheck::Append);
        }
        Err(SequenceError::OutOfOrder(format!(
            "producer {} sent sequence {}, expected {expected}",
            meta.producer_id, meta.base_sequence
        )))
    }

    /// Remembers a batch written at `base_offset..next_offset`.
    pub fn record(&mut self, meta: &BatchMeta, base_offset: u64, next_offset: u64) {
        if meta.producer_id < 0 {
            return;
        }
        let state = self.producers.entry(meta.producer_id).or_default();
        if meta.producer_epoch != state.epoch {
            state.epoch = meta.producer_epoch;
            state.batches.clear();
        }
        if state.batches.len() == CACHED_BATCHES {
            state.batches.pop_front();
        }
        state.batches.push_back(CachedBatch {
            first_sequence: meta.base_sequence,
            last_sequence: last_sequence(meta),
            base_offset,
            next_offset,
        });
    }

    /// Forgets the batches at `offset` and after: they were discarded before reaching the disk,
    /// so a producer's retry of them is new data again.
    pub fn forget_from(&mut self, offset: u64) {
        for state in self.producers.values_mut() {
            while state.batches.back().is_some_and(|b| b.base_offset >= offset) {
                state.batches.pop_back();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(producer_id: i64, epoch: i16, base_sequence: i32, count: u32) -> BatchMeta {
        BatchMeta {
            record_count: count,
            first_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence,
        }
    }

    #[test]
    fn a_retried_batch_is_a_duplicate_with_its_original_offsets() {
        let mut table = ProducerTable::default();
        let first = meta(7, 0, 0, 10);
        assert_eq!(table.check(&first), Ok(SequenceCheck::Append));
        table.record(&first, 100, 110);
        let second = meta(7, 0, 10, 5);
        assert_eq!(table.check(&second), Ok(SequenceCheck::Append));
        table.record(&second, 110, 115);
        assert_eq!(
            table.check(&first),
            Ok(SequenceCheck::Duplicate { base_offset: 100, next_offset: 110 })
        );
        assert_eq!(table.check(&meta(7, 0, 15, 1)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn forgotten_batches_are_new_data_again() {
        let mut table = ProducerTable::default();
        table.record(&meta(7, 0, 0, 10), 100, 110);
        table.record(&meta(7, 0, 10, 5), 110, 115);
        table.forget_from(110);
        assert_eq!(table.check(&meta(7, 0, 10, 5)), Ok(SequenceCheck::Append));
        assert!(matches!(table.check(&meta(7, 0, 0, 10)), Ok(SequenceCheck::Duplicate { .. })));
        assert!(matches!(table.check(&meta(7, 0, 15, 1)), Err(SequenceError::OutOfOrder(_))));
    }

    #[test]
    fn gaps_and_stale_epochs_are_refused() {
        let mut table = ProducerTable::default();
        table.record(&meta(7, 3, 0, 10), 0, 10);
        assert!(matches!(table.check(&meta(7, 3, 12, 1)), Err(SequenceError::OutOfOrder(_))));
        assert!(matches!(table.check(&meta(7, 2, 10, 1)), Err(SequenceError::StaleEpoch(_))));
        assert_eq!(table.check(&meta(7, 4, 0, 1)), Ok(SequenceCheck::Append));
        assert!(matches!(table.check(&meta(7, 4, 5, 1)), Err(SequenceError::OutOfOrder(_))));
        // Unknown producers and producers without ids start anywhere.
        assert_eq!(table.check(&meta(8, 0, 42, 1)), Ok(SequenceCheck::Append));
        assert_eq!(table.check(&meta(-1, -1, -1, 1)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn sequences_wrap_and_only_the_newest_batches_are_kept() {
        let mut table = ProducerTable::default();
        let near_end = meta(1, 0, i32::MAX - 1, 2);
        table.record(&near_end, 0, 2);
        assert_eq!(table.check(&meta(1, 0, 0, 1)), Ok(SequenceCheck::Append));
        for i in 0..6 {
            table.record(&meta(1, 0, i, 1), 2 + i as u64, 3 + i as u64);
        }
        assert!(matches!(table.check(&near_end), Err(SequenceError::OutOfOrder(_))));
        assert!(matches!(table.check(&meta(1, 0, 1, 1)), Ok(SequenceCheck::Duplicate { .. })));
    }
}
