//! What a topic's settings make of a produced Kafka batch, as Kafka's `LogValidator` does:
//! - with `message.timestamp.type=CreateTime`, the records' timestamps are checked against the
//!   broker's clock (KIP-937's `message.timestamp.before.max.ms` and `.after.max.ms`), a batch
//!   with one out of range refused whole (INVALID_TIMESTAMP);
//! - with a `compression.type` other than `producer`, a batch in another codec is recompressed:
//!   its records section decompressed (bounded) and compressed again, every record byte kept;
//! - with `LogAppendTime`, the batch takes the broker's clock as its max timestamp and the
//!   timestamp-type attribute, which readers then give every record (Kafka's `setMaxTimestamp`).
//!
//! A batch none of this changes is stored as sent, untouched. The checks read only the header
//! unless a before-limit is set: a record older than the batch's first is found only by reading
//! every record, as Kafka does; the after-limit holds the batch's max timestamp, which the
//! producer computed over its records.

use std::borrow::Cow;

use bytes::BytesMut;
use zerocopy::FromBytes;

use crate::error::{BrokerError, ErrorKind};
use crate::record::batch::NativeBatchView;
use crate::record::codecs::{self, Levels};
use crate::record::convert::{for_each_record, native_to_kafka, DECOMPRESSED_BYTES_MAX};
use crate::record::kafka_batch::{self, BatchHeader, ATTRIBUTE_CODEC_MASK, BATCH_HEADER_BYTES};
use crate::record::{BatchMeta, EntryHeader, PayloadFormat};
use crate::types::{LeaderEpoch, Offset};

/// Attribute bit: every record's timestamp is the batch's max timestamp (LogAppendTime).
pub const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
/// Kafka's "no timestamp": exempt from the limits, as Kafka's validator exempts it.
const NO_TIMESTAMP: i64 = -1;
/// The batch's size field counts from after itself (base offset and length).
const LENGTH_COUNTED_FROM: usize = 12;

/// How far producers' timestamps may stray from the broker's clock (ms; `i64::MAX`: no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampLimits {
    pub before_max_ms: i64,
    pub after_max_ms: i64,
}

impl TimestampLimits {
    /// Whether every record must be read: only a before-limit needs the oldest timestamp.
    pub fn needs_each_record(&self) -> bool {
        self.before_max_ms != i64::MAX
    }

    /// `timestamp` (of the record at `offset_delta`) against the broker's clock `now_ms`.
    pub fn check(&self, timestamp: i64, offset_delta: i64, now_ms: i64) -> Result<(), String> {
        let (earliest, latest) =
            (now_ms.saturating_sub(self.before_max_ms), now_ms.saturating_add(self.after_max_ms));
        if timestamp == NO_TIMESTAMP || (earliest..=latest).contains(&timestamp) {
            return Ok(());
        }
        // Kafka's words, so clients' logs read the same.
        Err(format!(
            "Timestamp {timestamp} of message with offset {offset_delta} is out of range. The \
             timestamp should be within [{earliest}, {latest}]"
        ))
    }
}

/// What a topic does to produced batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRules {
    /// The codec batches are stored in; `None` keeps the producer's.
    pub codec: Option<i16>,
    pub levels: Levels,
    pub log_append_time: bool,
    /// Checked only with CreateTime.
    pub limits: TimestampLimits,
}

impl BatchRules {
    /// Whether a batch in the native format must become a Kafka batch to be stored: only a
    /// Kafka batch has a codec and a timestamp type (native batches are uncompressed, their
    /// records' timestamps their own).
    pub fn rewrites_native(&self) -> bool {
        self.log_append_time || self.codec.is_some_and(|codec| codec != 0)
    }
}

/// Why a batch cannot be stored as the topic asks.
#[derive(Debug, PartialEq, Eq)]
pub enum ConformError {
    /// A record's timestamp is out of range (Kafka's INVALID_TIMESTAMP).
    Timestamp(String),
    /// The records could not be read or written (a corrupt compressed section, say).
    Corrupt(String),
}

impl ConformError {
    /// The refusal of a batch of `topic`-`partition`, as the broker answers it.
    pub fn refusal(self, topic: &str, partition: u32) -> BrokerError {
        let (kind, why) = match self {
            ConformError::Timestamp(why) => (ErrorKind::InvalidTimestamp, why),
            ConformError::Corrupt(why) => (ErrorKind::CorruptMessage, why),
        };
        BrokerError::new(kind, format!("{topic}-{partition}: {why}"))
    }
}

/// `batch` (one validated Kafka batch) as `rules` store it at `now_ms`: `None` when it is
/// stored as sent.
pub fn conform(
    batch: &[u8],
    rules: &BatchRules,
    now_ms: i64,
) -> Result<Option<Vec<u8>>, ConformError> {
    let header = BatchHeader::read(batch)
        .ok_or_else(|| ConformError::Corrupt("a batch shorter than its header".into()))?;
    if !rules.log_append_time {
        check_timestamps(batch, &header, &rules.limits, now_ms)?;
    }
    let recompress_into = rules.codec.filter(|codec| *codec != header.codec());
    if recompress_into.is_none() && !rules.log_append_time {
        return Ok(None);
    }
    let mut out = match recompress_into {
        Some(codec) => recompressed(batch, &header, codec, rules.levels)?,
        None => batch.to_vec(),
    };
    let (fields, _) = BatchHeader::mut_from_prefix(&mut out)
        .map_err(|_| ConformError::Corrupt("a batch shorter than its header".into()))?;
    if rules.log_append_time {
        fields.attributes.set(fields.attributes.get() | ATTRIBUTE_LOG_APPEND_TIME);
        fields.max_timestamp.set(now_ms);
    }
    kafka_batch::seal_crc(&mut out);
    Ok(Some(out))
}

/// A native batch's timestamps (its `payload` validated against `meta`) against `limits`.
pub fn check_native(
    payload: &[u8],
    meta: &BatchMeta,
    limits: &TimestampLimits,
    now_ms: i64,
) -> Result<(), ConformError> {
    let last_delta = i64::from(meta.record_count.saturating_sub(1));
    limits.check(meta.max_timestamp, last_delta, now_ms).map_err(ConformError::Timestamp)?;
    if !limits.needs_each_record() {
        return Ok(());
    }
    for record in native_view(payload, meta)?.records() {
        limits
            .check(record.timestamp, record.offset as i64, now_ms)
            .map_err(ConformError::Timestamp)?;
    }
    Ok(())
}

/// A native batch as the Kafka batch its topic stores (when [`BatchRules::rewrites_native`]).
pub fn native_as_kafka(
    payload: &[u8],
    meta: &BatchMeta,
    rules: &BatchRules,
    now_ms: i64,
) -> Result<Vec<u8>, ConformError> {
    let header = native_header(payload, meta)?;
    let mut kafka = BytesMut::new();
    native_to_kafka(&header, payload, &mut kafka).map_err(ConformError::Corrupt)?;
    Ok(conform(&kafka, rules, now_ms)?.unwrap_or_else(|| kafka.to_vec()))
}

/// The header a native batch would be stored under at offset 0.
fn native_header(payload: &[u8], meta: &BatchMeta) -> Result<EntryHeader, ConformError> {
    let len = u32::try_from(payload.len()).map_err(|e| ConformError::Corrupt(e.to_string()))?;
    Ok(EntryHeader::new(PayloadFormat::Native, Offset(0), LeaderEpoch(0), meta, len, 0))
}

fn native_view<'a>(
    payload: &'a [u8],
    meta: &BatchMeta,
) -> Result<NativeBatchView<'a>, ConformError> {
    let header = native_header(payload, meta)?;
    NativeBatchView::new(&header, payload).map_err(|e| ConformError::Corrupt(e.to_string()))
}

fn check_timestamps(
    batch: &[u8],
    header: &BatchHeader,
    limits: &TimestampLimits,
    now_ms: i64,
) -> Result<(), ConformError> {
    let last_delta = i64::from(header.last_offset_delta.get());
    limits
        .check(header.max_timestamp.get(), last_delta, now_ms)
        .map_err(ConformError::Timestamp)?;
    if !limits.needs_each_record() {
        return Ok(());
    }
    let mut refused = None;
    let base_offset = header.base_offset.get();
    for_each_record(batch, |record| {
        if refused.is_none() {
            let delta = (record.offset as i64).saturating_sub(base_offset);
            refused = limits.check(record.timestamp, delta, now_ms).err();
        }
    })
    .map_err(ConformError::Corrupt)?;
    refused.map_or(Ok(()), |why| Err(ConformError::Timestamp(why)))
}

/// The batch with its records section in `codec`: header fields kept but the codec and length.
fn recompressed(
    batch: &[u8],
    header: &BatchHeader,
    codec: i16,
    levels: Levels,
) -> Result<Vec<u8>, ConformError> {
    let section = batch.get(BATCH_HEADER_BYTES..).unwrap_or_default();
    let plain = match header.codec() {
        0 => Cow::Borrowed(section),
        from => Cow::Owned(
            codecs::decompress(from, section, DECOMPRESSED_BYTES_MAX)
                .map_err(|e| ConformError::Corrupt(format!("decompressing the batch: {e}")))?,
        ),
    };
    let body = match codec {
        0 => plain.into_owned(),
        to => codecs::compress(to, &plain, levels).map_err(ConformError::Corrupt)?,
    };
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + body.len());
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(&body);
    let length = i32::try_from(out.len() - LENGTH_COUNTED_FROM)
        .map_err(|_| ConformError::Corrupt(format!("{} bytes once recompressed", out.len())))?;
    let (fields, _) = BatchHeader::mut_from_prefix(&mut out)
        .map_err(|_| ConformError::Corrupt("a batch shorter than its header".into()))?;
    fields.attributes.set((fields.attributes.get() & !ATTRIBUTE_CODEC_MASK) | codec);
    fields.batch_length.set(length);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::convert::kafka_records;
    use crate::record::kafka_batch::validate_produced;

    const NOW: i64 = 1_700_000_000_000;

    fn rules() -> BatchRules {
        BatchRules {
            codec: None,
            levels: Levels { gzip: -1, lz4: 9, zstd: 3 },
            log_append_time: false,
            limits: TimestampLimits { before_max_ms: i64::MAX, after_max_ms: 3_600_000 },
        }
    }

    /// A producer's batch of `count` records, their timestamps `NOW + step * i`.
    fn batch(count: usize, step: i64, codec: i16) -> Vec<u8> {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: 7,
                producer_epoch: 1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: NOW + step * i as i64,
                key: Some(format!("key-{i}").into()),
                value: Some(format!("value {i} value value value").into()),
                headers: Default::default(),
                delete_horizon: false,
            })
            .collect();
        let compression = match codec {
            0 => Compression::None,
            codecs::GZIP => Compression::Gzip,
            _ => Compression::Zstd,
        };
        let mut out = bytes::BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression };
        RecordBatchEncoder::encode(&mut out, &records, &options).expect("an encodable batch");
        out.to_vec()
    }

    #[test]
    fn a_batch_the_rules_do_not_touch_is_stored_as_sent() {
        assert_eq!(conform(&batch(10, 1, 0), &rules(), NOW), Ok(None));
        let zstd = BatchRules { codec: Some(codecs::ZSTD), ..rules() };
        assert_eq!(conform(&batch(10, 1, codecs::ZSTD), &zstd, NOW), Ok(None));
    }

    #[test]
    fn recompressed_batches_keep_every_record_and_a_valid_crc() {
        for (from, to) in [(0, codecs::ZSTD), (codecs::GZIP, codecs::LZ4), (codecs::ZSTD, 0)] {
            let sent = batch(200, 1, from);
            let into = BatchRules { codec: Some(to), ..rules() };
            let stored = conform(&sent, &into, NOW).unwrap().expect("recompressed");
            let header = validate_produced(&stored, u32::MAX).expect("a valid batch");
            assert_eq!(header.codec(), to);
            assert_eq!(header.meta(), validate_produced(&sent, u32::MAX).unwrap().meta());
            assert_eq!(kafka_records(&stored).unwrap(), kafka_records(&sent).unwrap());
        }
    }

    #[test]
    fn log_append_time_gives_the_batch_the_broker_clock() {
        let sent = batch(5, -1000, codecs::GZIP);
        let appended = BatchRules { log_append_time: true, codec: Some(0), ..rules() };
        let stored = conform(&sent, &appended, NOW + 5).unwrap().expect("rewritten");
        let header = validate_produced(&stored, u32::MAX).expect("a valid batch");
        assert_eq!(header.attributes.get() & ATTRIBUTE_LOG_APPEND_TIME, ATTRIBUTE_LOG_APPEND_TIME);
        assert_eq!((header.codec(), header.max_timestamp.get()), (0, NOW + 5));
        let times: Vec<i64> = kafka_records(&stored).unwrap().iter().map(|r| r.timestamp).collect();
        assert_eq!(times, vec![NOW + 5; 5], "every record reads the append time");
    }

    #[test]
    fn timestamps_out_of_range_are_refused_whole() {
        // An hour and a bit ahead: the default after-limit refuses it.
        let ahead = batch(3, 3_600_001, 0);
        let refused = conform(&ahead, &rules(), NOW);
        assert!(
            matches!(refused, Err(ConformError::Timestamp(ref why)) if why.contains("offset 2"))
        );
        // One record a day old, after a first that is fine: found only by reading each record.
        let before = TimestampLimits { before_max_ms: 60_000, after_max_ms: i64::MAX };
        let old = batch(3, -86_400_000, codecs::GZIP);
        let limited = BatchRules { limits: before, ..rules() };
        assert!(matches!(conform(&old, &limited, NOW), Err(ConformError::Timestamp(_))));
        assert_eq!(conform(&batch(3, 1, 0), &limited, NOW), Ok(None));
        // LogAppendTime replaces the producers' times: nothing of theirs is checked.
        let appended = BatchRules { log_append_time: true, ..limited };
        assert!(conform(&old, &appended, NOW).unwrap().is_some());
    }
}
