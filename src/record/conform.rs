//! What a topic's settings make of a produced Kafka batch, as Kafka's `LogValidator` does:
//! - with `message.timestamp.type=CreateTime`, the records' timestamps are checked against the
//!   broker's clock (KIP-937's `message.timestamp.before.max.ms` and `.after.max.ms`), a batch
//!   with one out of range refused whole (INVALID_TIMESTAMP);
//! - with a `compression.type` other than `producer`, a batch in another codec is recompressed:
//!   its records section decompressed (bounded) and compressed again, every record byte kept;
//! - with `LogAppendTime`, the batch takes the broker's clock as its max timestamp and the
//!   timestamp-type attribute, which readers then give every record (Kafka's `setMaxTimestamp`).
//!
//! A batch none of this changes is stored as sent, untouched. Kafka reads every record of every
//! batch; here the checks read only the header unless they must. Every record is read (and
//! their max becomes the header's, as Kafka recomputes it) when the batch is recompressed
//! (read anyway), for a before-limit (a record older than the first is found no other way),
//! and when the header has no max timestamp or carries a producer's LogAppendTime bit, which
//! hides the records' own. Otherwise the after-limit holds the header's max timestamp, which
//! every Kafka client computes over its records.
//!
//! A batch decompresses into at most 64 MiB, as every client batch the broker reads, and, to be
//! stored uncompressed, into at most `max.message.bytes`, the size it must then fit
//! (MESSAGE_TOO_LARGE beyond). The CPU a rewrite takes is the shard's: a topic that recompresses
//! at a high level pays for it on every batch (docs/PERFORMANCE.md has the figures).

use std::borrow::Cow;

use bytes::BytesMut;
use zerocopy::FromBytes;

use crate::error::{BrokerError, ErrorKind};
use crate::record::batch::NativeBatchView;
use crate::record::codecs::{self, DecompressError, Levels};
use crate::record::convert::{native_to_kafka, visit_records, DECOMPRESSED_BYTES_MAX};
use crate::record::kafka_batch::{
    self, BatchHeader, ATTRIBUTE_CODEC_MASK, ATTRIBUTE_LOG_APPEND_TIME, BATCH_HEADER_BYTES,
    LENGTH_COUNTED_FROM,
};
use crate::record::{BatchMeta, EntryHeader, PayloadFormat};
use crate::types::{LeaderEpoch, Offset};

/// Kafka's "no timestamp": exempt from the limits, as Kafka's validator exempts it.
const NO_TIMESTAMP: i64 = -1;

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
    /// `max.message.bytes`: bounds what a batch may decompress into to be rewritten.
    pub batch_bytes_max: u32,
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
    /// Its records decompress into more than the topic lets a batch hold (MESSAGE_TOO_LARGE).
    TooLarge(String),
}

impl ConformError {
    /// The refusal of a batch of `topic`-`partition`, as the broker answers it.
    pub fn refusal(self, topic: &str, partition: u32) -> BrokerError {
        let (kind, why) = match self {
            ConformError::Timestamp(why) => (ErrorKind::InvalidTimestamp, why),
            ConformError::Corrupt(why) => (ErrorKind::CorruptMessage, why),
            ConformError::TooLarge(why) => (ErrorKind::MessageTooLarge, why),
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
    let recompress_into = rules.codec.filter(|codec| *codec != header.codec());
    let producer_log_append_time = header.attributes.get() & ATTRIBUTE_LOG_APPEND_TIME != 0;
    // The timestamp type is the topic's: a producer's LogAppendTime bit on a CreateTime topic
    // goes, as Kafka's validator sets the topic's type on every batch.
    let retyped = producer_log_append_time != rules.log_append_time;
    // Under CreateTime every record is read when it must be: to recompress it (read anyway),
    // for a before-limit, for a header without a max timestamp, or for records whose own
    // timestamps the producer's LogAppendTime bit hid. Their max then replaces the header's.
    let read_each = !rules.log_append_time
        && (recompress_into.is_some()
            || rules.limits.needs_each_record()
            || header.max_timestamp.get() == NO_TIMESTAMP
            || producer_log_append_time);
    let plain = match read_each || recompress_into.is_some() {
        true => {
            let stored_codec = recompress_into.unwrap_or(header.codec());
            Some(plain_records(batch, &header, stored_codec, rules.batch_bytes_max)?)
        }
        false => None,
    };
    let records_max = match (&plain, rules.log_append_time) {
        (Some(plain), false) => Some(check_each_record(plain, &header, &rules.limits, now_ms)?),
        (None, false) => {
            let last_delta = i64::from(header.last_offset_delta.get());
            let max = header.max_timestamp.get();
            rules.limits.check(max, last_delta, now_ms).map_err(ConformError::Timestamp)?;
            None
        }
        (_, true) => None,
    };
    let header_holds = records_max.is_none_or(|max| max == header.max_timestamp.get());
    if recompress_into.is_none() && !rules.log_append_time && !retyped && header_holds {
        return Ok(None);
    }
    let mut out = match (recompress_into, &plain) {
        (Some(codec), Some(plain)) => rebuilt(batch, codec, plain, rules.levels)?,
        _ => batch.to_vec(),
    };
    let (fields, _) = BatchHeader::mut_from_prefix(&mut out)
        .map_err(|_| ConformError::Corrupt("a batch shorter than its header".into()))?;
    let attributes = fields.attributes.get() & !ATTRIBUTE_LOG_APPEND_TIME;
    if rules.log_append_time {
        fields.attributes.set(attributes | ATTRIBUTE_LOG_APPEND_TIME);
        fields.max_timestamp.set(now_ms);
    } else {
        fields.attributes.set(attributes);
        if let Some(max) = records_max {
            fields.max_timestamp.set(max);
        }
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
    // The converted batch's own buffer when nothing more changes it: no second copy.
    Ok(conform(&kafka, rules, now_ms)?.unwrap_or_else(|| Vec::from(kafka)))
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

/// The batch's records section uncompressed, bounded by what storing it in `codec` allows.
fn plain_records<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
    codec: i16,
    batch_bytes_max: u32,
) -> Result<Cow<'a, [u8]>, ConformError> {
    let section = batch.get(BATCH_HEADER_BYTES..).unwrap_or_default();
    // Stored uncompressed, it must fit max.message.bytes; else it is bounded as every
    // decompression of a client's batch is.
    let limit = match codec {
        0 => (batch_bytes_max as usize).min(DECOMPRESSED_BYTES_MAX),
        _ => DECOMPRESSED_BYTES_MAX,
    };
    match header.codec() {
        0 => Ok(Cow::Borrowed(section)),
        from => codecs::decompress(from, section, limit).map(Cow::Owned).map_err(|e| match e {
            DecompressError::TooLarge { .. } => ConformError::TooLarge(format!(
                "the batch's records are {e} (max.message.bytes {batch_bytes_max})"
            )),
            DecompressError::Corrupt(why) => {
                ConformError::Corrupt(format!("decompressing the batch: {why}"))
            }
        }),
    }
}

/// Every record of an uncompressed records section against `limits`, by its own timestamp
/// (a LogAppendTime bit on the header is not the topic's, and does not hide them); their max.
fn check_each_record(
    plain: &[u8],
    header: &BatchHeader,
    limits: &TimestampLimits,
    now_ms: i64,
) -> Result<i64, ConformError> {
    let mut own = *header;
    own.attributes.set(own.attributes.get() & !ATTRIBUTE_LOG_APPEND_TIME);
    let (mut refused, mut max) = (None, NO_TIMESTAMP);
    let base_offset = header.base_offset.get();
    visit_records(plain, &own, &mut |record| {
        max = max.max(record.timestamp);
        if refused.is_none() {
            let delta = (record.offset as i64).saturating_sub(base_offset);
            refused = limits.check(record.timestamp, delta, now_ms).err();
        }
    })
    .map_err(ConformError::Corrupt)?;
    refused.map_or(Ok(max), |why| Err(ConformError::Timestamp(why)))
}

/// The batch with `plain` (its records section, uncompressed) in `codec`: header fields kept
/// but the codec and length.
fn rebuilt(
    batch: &[u8],
    codec: i16,
    plain: &[u8],
    levels: Levels,
) -> Result<Vec<u8>, ConformError> {
    let body = match codec {
        0 => Cow::Borrowed(plain),
        to => Cow::Owned(codecs::compress(to, plain, levels).map_err(ConformError::Corrupt)?),
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
            batch_bytes_max: 1_048_588,
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

    /// `batch` with its header changed by `change` and its CRC sealed again.
    fn patched(mut batch: Vec<u8>, change: impl FnOnce(&mut BatchHeader)) -> Vec<u8> {
        change(BatchHeader::mut_from_prefix(&mut batch).unwrap().0);
        kafka_batch::seal_crc(&mut batch);
        batch
    }

    #[test]
    fn a_producers_log_append_time_bit_hides_no_timestamp_from_the_limits() {
        // Records from 1970 behind a LogAppendTime bit and a max of now, on a CreateTime topic
        // with a before-limit: read by their own timestamps, refused.
        let hidden = patched(batch(3, 1, 0), |h| {
            h.attributes.set(h.attributes.get() | ATTRIBUTE_LOG_APPEND_TIME);
            h.base_timestamp.set(0);
        });
        let before = TimestampLimits { before_max_ms: 60_000, after_max_ms: i64::MAX };
        let limited = BatchRules { limits: before, ..rules() };
        assert!(matches!(conform(&hidden, &limited, NOW), Err(ConformError::Timestamp(_))));
    }

    #[test]
    fn the_timestamp_type_is_the_topics() {
        // A producer's LogAppendTime bit on a CreateTime topic goes.
        let flagged = patched(batch(3, 1, 0), |h| {
            h.attributes.set(h.attributes.get() | ATTRIBUTE_LOG_APPEND_TIME)
        });
        let stored = conform(&flagged, &rules(), NOW).unwrap().expect("retyped");
        let header = validate_produced(&stored, u32::MAX).expect("a valid batch");
        assert_eq!(header.attributes.get() & ATTRIBUTE_LOG_APPEND_TIME, 0);
        assert_eq!(header.meta().first_timestamp, NOW, "the records' own first timestamp");
    }

    #[test]
    fn a_header_without_a_max_timestamp_has_its_records_read() {
        let hidden = patched(batch(3, 3_600_001, 0), |h| h.max_timestamp.set(-1));
        assert!(matches!(conform(&hidden, &rules(), NOW), Err(ConformError::Timestamp(_))));
    }

    #[test]
    fn recompressing_reads_every_record_and_bounds_what_it_decompresses() {
        // A record two hours ahead behind a header max of now: found while recompressing, with
        // no before-limit to make the records read otherwise.
        let ahead = patched(batch(2, 7_200_000, codecs::GZIP), |h| h.max_timestamp.set(NOW));
        let into_zstd = BatchRules { codec: Some(codecs::ZSTD), ..rules() };
        assert!(matches!(conform(&ahead, &into_zstd, NOW), Err(ConformError::Timestamp(_))));
        // A header max the records do not have is replaced by theirs.
        let lying = patched(batch(3, 1, codecs::GZIP), |h| h.max_timestamp.set(NOW - 5));
        let stored = conform(&lying, &into_zstd, NOW).unwrap().expect("recompressed");
        let header = validate_produced(&stored, u32::MAX).expect("a valid batch");
        assert_eq!(header.max_timestamp.get(), NOW + 2);
        // Stored uncompressed, a gzip batch must fit max.message.bytes once decompressed.
        let large = batch(400, 1, codecs::GZIP);
        let small = BatchRules { codec: Some(0), batch_bytes_max: 4096, ..rules() };
        let refused = conform(&large, &small, NOW);
        assert!(matches!(refused, Err(ConformError::TooLarge(ref why)) if why.contains("4096")));
        let roomy = BatchRules { batch_bytes_max: 1 << 20, ..small };
        assert!(conform(&large, &roomy, NOW).unwrap().is_some());
    }
}
