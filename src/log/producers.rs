//! Idempotent producers: per partition, each producer id's epoch and its last few batches.
//!
//! A producer with an id numbers its batches per partition; a batch it retries (because an
//! acknowledgement was lost) carries the same sequence, and the partition answers it with the
//! offset it was first written at instead of writing it twice. A gap in the sequence or a stale
//! epoch is refused. The table is rebuilt on open from the newest entries of the log, whose
//! headers carry producer id, epoch and base sequence.
//!
//! A producer's state is forgotten once it has not written for `producer.id.expiration.ms`
//! (Kafka's setting and default, one day), and the table holds at most [`PRODUCERS_MAX`]
//! producers, forgetting the longest idle first: every new producer id a client invents
//! otherwise costs memory until restart. A forgotten producer's next batch is taken as new, as
//! an unknown producer's is.

use std::collections::{HashMap, VecDeque};

use crate::record::BatchMeta;
use crate::types::Offset;

/// Batches remembered per producer: Kafka clients keep at most 5 in flight per partition.
pub const CACHED_BATCHES: usize = 5;
/// Producers remembered per partition, a few MiB at most. Past it the longest idle quarter is
/// forgotten at once, so a client cycling through producer ids costs one sort per quarter.
pub const PRODUCERS_MAX: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CachedBatch {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: Offset,
    next_offset: Offset,
    /// Its largest timestamp as stored: under LogAppendTime, when the broker appended it.
    max_timestamp: i64,
}

#[derive(Debug, Default)]
struct ProducerState {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
    /// Wall-clock milliseconds of its newest batch here.
    last_write_ms: i64,
    /// Its newest batch's largest record timestamp (the producer's clock).
    last_timestamp: i64,
}

/// A producer as DescribeProducers reports it (KIP-664): its epoch, the sequence of its last
/// record here, and its newest batch's largest timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_timestamp: i64,
}

/// What to do with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New data: append it.
    Append,
    /// Already in the log at these offsets, with this largest timestamp as stored:
    /// acknowledge them again, as they were.
    Duplicate { base_offset: Offset, next_offset: Offset, max_timestamp: i64 },
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
                max_timestamp: batch.max_timestamp,
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

    /// Remembers a batch written at `base_offset..next_offset` at `now_ms`.
    pub fn record(
        &mut self,
        meta: &BatchMeta,
        base_offset: Offset,
        next_offset: Offset,
        now_ms: i64,
    ) {
        if meta.producer_id < 0 {
            return;
        }
        if self.producers.len() >= PRODUCERS_MAX && !self.producers.contains_key(&meta.producer_id)
        {
            self.forget_longest_idle(PRODUCERS_MAX / 4);
        }
        let state = self.producers.entry(meta.producer_id).or_default();
        state.last_write_ms = now_ms;
        state.last_timestamp = meta.max_timestamp;
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
            max_timestamp: meta.max_timestamp,
        });
    }

    /// The producers remembered, by id; -1 for the sequence of one whose batches were forgotten
    /// (a truncation dropped them).
    pub fn describe(&self) -> Vec<ProducerSummary> {
        let mut producers: Vec<ProducerSummary> = (self.producers.iter())
            .map(|(id, state)| ProducerSummary {
                producer_id: *id,
                epoch: state.epoch,
                last_sequence: state.batches.back().map_or(-1, |b| b.last_sequence),
                last_timestamp: state.last_timestamp,
            })
            .collect();
        producers.sort_by_key(|p| p.producer_id);
        producers
    }

    /// Forgets the producers that last wrote before `cutoff_ms`. Returns how many.
    pub fn expire(&mut self, cutoff_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, state| state.last_write_ms >= cutoff_ms);
        before - self.producers.len()
    }

    fn forget_longest_idle(&mut self, count: usize) {
        let mut by_age: Vec<(i64, i64)> =
            self.producers.iter().map(|(id, state)| (state.last_write_ms, *id)).collect();
        by_age.sort_unstable();
        for (_, id) in by_age.into_iter().take(count) {
            self.producers.remove(&id);
        }
    }

    /// Forgets the batches at `offset` and after: they were discarded before reaching the disk,
    /// so a producer's retry of them is new data again.
    pub fn forget_from(&mut self, offset: Offset) {
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
    fn a_retried_batch_is_a_duplicate_with_its_original_offsets_and_timestamp() {
        let mut table = ProducerTable::default();
        // As stored: under LogAppendTime, stamped with the broker's clock at its append.
        let first = BatchMeta { max_timestamp: 1_700_000_000_000, ..meta(7, 0, 0, 10) };
        assert_eq!(table.check(&first), Ok(SequenceCheck::Append));
        table.record(&first, Offset(100), Offset(110), 0);
        let second = meta(7, 0, 10, 5);
        assert_eq!(table.check(&second), Ok(SequenceCheck::Append));
        table.record(&second, Offset(110), Offset(115), 0);
        // The retry, stamped again by whoever sent it: answered as the batch was stored.
        let retried = BatchMeta { max_timestamp: 1_800_000_000_000, ..first };
        assert_eq!(
            table.check(&retried),
            Ok(SequenceCheck::Duplicate {
                base_offset: Offset(100),
                next_offset: Offset(110),
                max_timestamp: 1_700_000_000_000,
            })
        );
        assert_eq!(table.check(&meta(7, 0, 15, 1)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn forgotten_batches_are_new_data_again() {
        let mut table = ProducerTable::default();
        table.record(&meta(7, 0, 0, 10), Offset(100), Offset(110), 0);
        table.record(&meta(7, 0, 10, 5), Offset(110), Offset(115), 0);
        table.forget_from(Offset(110));
        assert_eq!(table.check(&meta(7, 0, 10, 5)), Ok(SequenceCheck::Append));
        assert!(matches!(table.check(&meta(7, 0, 0, 10)), Ok(SequenceCheck::Duplicate { .. })));
        assert!(matches!(table.check(&meta(7, 0, 15, 1)), Err(SequenceError::OutOfOrder(_))));
    }

    #[test]
    fn gaps_and_stale_epochs_are_refused() {
        let mut table = ProducerTable::default();
        table.record(&meta(7, 3, 0, 10), Offset(0), Offset(10), 0);
        assert!(matches!(table.check(&meta(7, 3, 12, 1)), Err(SequenceError::OutOfOrder(_))));
        assert!(matches!(table.check(&meta(7, 2, 10, 1)), Err(SequenceError::StaleEpoch(_))));
        assert_eq!(table.check(&meta(7, 4, 0, 1)), Ok(SequenceCheck::Append));
        assert!(matches!(table.check(&meta(7, 4, 5, 1)), Err(SequenceError::OutOfOrder(_))));
        // Unknown producers and producers without ids start anywhere.
        assert_eq!(table.check(&meta(8, 0, 42, 1)), Ok(SequenceCheck::Append));
        assert_eq!(table.check(&meta(-1, -1, -1, 1)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn idle_producers_expire_and_are_new_again() {
        let mut table = ProducerTable::default();
        table.record(&meta(7, 0, 0, 10), Offset(0), Offset(10), 1_000);
        table.record(&meta(8, 0, 0, 10), Offset(10), Offset(20), 5_000);
        assert!(matches!(table.check(&meta(7, 0, 50, 1)), Err(SequenceError::OutOfOrder(_))));
        assert_eq!(table.expire(2_000), 1);
        assert_eq!(table.check(&meta(7, 0, 50, 1)), Ok(SequenceCheck::Append), "7 is forgotten");
        assert!(matches!(table.check(&meta(8, 0, 50, 1)), Err(SequenceError::OutOfOrder(_))));
    }

    #[test]
    fn past_the_limit_the_longest_idle_producers_are_forgotten() {
        let mut table = ProducerTable::default();
        for id in 0..PRODUCERS_MAX as i64 {
            table.record(&meta(id, 0, 0, 1), Offset(id as u64), Offset(id as u64 + 1), 1_000 + id);
        }
        // Producer 0 writes again, so it is the newest, not the oldest.
        table.record(&meta(0, 0, 1, 1), Offset(1), Offset(2), 1_000_000);
        table.record(&meta(-1, -1, -1, 1), Offset(0), Offset(1), 1_000_001);
        assert_eq!(table.producers.len(), PRODUCERS_MAX, "ids of -1 are not tracked");
        table.record(&meta(PRODUCERS_MAX as i64, 0, 0, 1), Offset(0), Offset(1), 1_000_002);
        assert_eq!(table.producers.len(), PRODUCERS_MAX - PRODUCERS_MAX / 4 + 1);
        assert!(matches!(table.check(&meta(0, 0, 9, 1)), Err(SequenceError::OutOfOrder(_))));
        assert_eq!(table.check(&meta(1, 0, 9, 1)), Ok(SequenceCheck::Append), "1 was idle longest");
        let newest_old = PRODUCERS_MAX as i64 - 1;
        assert!(matches!(
            table.check(&meta(newest_old, 0, 9, 1)),
            Err(SequenceError::OutOfOrder(_))
        ));
    }

    #[test]
    fn sequences_wrap_and_only_the_newest_batches_are_kept() {
        let mut table = ProducerTable::default();
        let near_end = meta(1, 0, i32::MAX - 1, 2);
        table.record(&near_end, Offset(0), Offset(2), 0);
        assert_eq!(table.check(&meta(1, 0, 0, 1)), Ok(SequenceCheck::Append));
        for i in 0..6 {
            table.record(&meta(1, 0, i, 1), Offset(2 + i as u64), Offset(3 + i as u64), 0);
        }
        assert!(matches!(table.check(&near_end), Err(SequenceError::OutOfOrder(_))));
        assert!(matches!(table.check(&meta(1, 0, 1, 1)), Ok(SequenceCheck::Duplicate { .. })));
    }
}
