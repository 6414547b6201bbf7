//! Kafka RecordBatch v2 headers: validating what a producer sends before it becomes a log entry.
//!
//! ```text
//!  offset  size  field (big-endian)
//!       0     8  baseOffset            written by the broker
//!       8     4  batchLength           bytes after this field
//!      12     4  partitionLeaderEpoch  written by the broker
//!      16     1  magic                 2
//!      17     4  crc                   CRC-32C of everything from attributes to the end
//!      21     2  attributes            bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control
//!      23     4  lastOffsetDelta
//!      27     8  baseTimestamp
//!      35     8  maxTimestamp
//!      43     8  producerId
//!      51     2  producerEpoch
//!      53     4  baseSequence
//!      57     4  recordsCount
//!      61     .  records (compressed as a whole when the codec is not 0)
//! ```
//!
//! The broker rewrites only the first 16 bytes, which the CRC does not cover, so a batch is
//! stored as the producer compressed and checksummed it, unless its topic's settings make it
//! something else (`conform.rs`: another codec, LogAppendTime), resealed with a new CRC.

use zerocopy::big_endian::{I16, I32, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{BrokerError, ErrorKind};
use crate::record::BatchMeta;

/// Bytes before the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes at the start of a batch the broker owns: base offset, length, leader epoch.
pub const BROKER_OWNED_BYTES: usize = 16;
/// Where the CRC-32C's coverage starts (the attributes).
const CRC_COVERED_FROM: usize = 21;
/// Bytes of the batch header after `batchLength`, which that length counts.
pub const LENGTH_COUNTED_FROM: usize = 12;
/// Attribute bit: every record's timestamp is the batch's max timestamp (LogAppendTime).
pub const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;

pub const ATTRIBUTE_CODEC_MASK: i16 = 0x07;
pub const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
pub const ATTRIBUTE_CONTROL: i16 = 0x20;

const _: () = assert!(std::mem::size_of::<BatchHeader>() == BATCH_HEADER_BYTES);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct BatchHeader {
    pub base_offset: I64,
    pub batch_length: I32,
    pub partition_leader_epoch: I32,
    pub magic: u8,
    pub crc: U32,
    pub attributes: I16,
    pub last_offset_delta: I32,
    pub base_timestamp: I64,
    pub max_timestamp: I64,
    pub producer_id: I64,
    pub producer_epoch: I16,
    pub base_sequence: I32,
    pub records_count: I32,
}

impl BatchHeader {
    /// The batch header at the start of `bytes`, unchecked.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        Self::read_from_prefix(bytes).ok().map(|(header, _)| header)
    }

    /// 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn codec(&self) -> i16 {
        self.attributes.get() & ATTRIBUTE_CODEC_MASK
    }

    /// What the log entry header records about this batch.
    pub fn meta(&self) -> BatchMeta {
        // Under LogAppendTime every record has the max timestamp, the first one included.
        let first_timestamp = match self.attributes.get() & ATTRIBUTE_LOG_APPEND_TIME {
            0 => self.base_timestamp.get(),
            _ => self.max_timestamp.get(),
        };
        BatchMeta {
            record_count: self.records_count.get() as u32,
            first_timestamp,
            max_timestamp: self.max_timestamp.get(),
            producer_id: self.producer_id.get(),
            producer_epoch: self.producer_epoch.get(),
            base_sequence: self.base_sequence.get(),
        }
    }
}

/// Why a produced batch was refused, as the Kafka error a broker returns for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// CORRUPT_MESSAGE: the bytes are not an intact batch.
    Corrupt(String),
    /// INVALID_RECORD: an intact batch a broker must not accept.
    Invalid(String),
    /// UNSUPPORTED_FOR_MESSAGE_FORMAT: magic 0 or 1 message sets.
    OldFormat(u8),
    /// MESSAGE_TOO_LARGE.
    TooLarge { len: usize, max: u32 },
}

impl BatchError {
    /// The refusal of a batch of `topic`-`partition`, as the broker answers it.
    pub fn refusal(&self, topic: &str, partition: u32) -> BrokerError {
        let kind = match self {
            Self::Corrupt(_) => ErrorKind::CorruptMessage,
            Self::Invalid(_) => ErrorKind::InvalidRecord,
            Self::OldFormat(_) => ErrorKind::UnsupportedForMessageFormat,
            Self::TooLarge { .. } => ErrorKind::MessageTooLarge,
        };
        BrokerError::new(kind, format!("{topic}-{partition}: {self}"))
    }
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupt(why) => write!(f, "corrupt record batch: {why}"),
            Self::Invalid(why) => write!(f, "invalid record batch: {why}"),
            Self::OldFormat(magic) => {
                write!(f, "message format v{magic} is not supported; use record batches (v2)")
            }
            Self::TooLarge { len, max } => {
                write!(f, "record batch of {len} bytes exceeds max.message.bytes {max}")
            }
        }
    }
}

/// Checks a produce request's records for one partition: exactly one v2 batch, intact (CRC-32C),
/// with consistent counts, not a control batch, within `max_message_bytes`.
pub fn validate_produced(
    records: &[u8],
    max_message_bytes: u32,
) -> Result<BatchHeader, BatchError> {
    let Some(header) = BatchHeader::read(records) else {
        let why = format!("{} bytes, less than a batch header", records.len());
        return Err(BatchError::Corrupt(why));
    };
    if header.magic != 2 {
        return Err(BatchError::OldFormat(header.magic));
    }
    let claimed = i64::from(header.batch_length.get()) + LENGTH_COUNTED_FROM as i64;
    if claimed < BATCH_HEADER_BYTES as i64 || claimed > records.len() as i64 {
        let why = format!("batch length {} does not fit {} bytes", claimed, records.len());
        return Err(BatchError::Corrupt(why));
    }
    if (claimed as usize) < records.len() {
        return Err(BatchError::Invalid("more than one batch for a partition".into()));
    }
    if records.len() > max_message_bytes as usize {
        return Err(BatchError::TooLarge { len: records.len(), max: max_message_bytes });
    }
    let computed = crc32c::crc32c(&records[CRC_COVERED_FROM..]);
    if computed != header.crc.get() {
        let why = format!("CRC-32C {:#010x}, batch says {:#010x}", computed, header.crc.get());
        return Err(BatchError::Corrupt(why));
    }
    let count = header.records_count.get();
    if count <= 0 || i64::from(header.last_offset_delta.get()) + 1 != i64::from(count) {
        let why =
            format!("{count} records but last offset delta {}", header.last_offset_delta.get());
        return Err(BatchError::Invalid(why));
    }
    let attributes = header.attributes.get();
    if attributes & ATTRIBUTE_CONTROL != 0 {
        return Err(BatchError::Invalid("control batches come only from brokers".into()));
    }
    if attributes & ATTRIBUTE_TRANSACTIONAL != 0 {
        return Err(BatchError::Invalid("transactions are not supported".into()));
    }
    if header.codec() > 4 {
        return Err(BatchError::Corrupt(format!("unknown compression codec {}", header.codec())));
    }
    if header.producer_id.get() >= 0 && header.base_sequence.get() < 0 {
        return Err(BatchError::Invalid("an idempotent batch without a sequence".into()));
    }
    Ok(header)
}

/// Computes and writes the CRC-32C of a batch assembled by the broker.
pub fn seal_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
    batch[17..CRC_COVERED_FROM].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An uncompressed batch of `count` empty-ish records, with a valid CRC.
    pub fn batch(count: i32) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..count {
            // length, attributes, timestampDelta, offsetDelta, key -1, value len 1 'v', 0 headers
            let body = [0u8, 0, (i as u8) << 1, 1, 2, b'v', 0];
            records.push((body.len() as u8) << 1);
            records.extend_from_slice(&body);
        }
        let mut out = vec![0u8; BATCH_HEADER_BYTES];
        out.extend_from_slice(&records);
        let len = (out.len() - LENGTH_COUNTED_FROM) as i32;
        out[8..12].copy_from_slice(&len.to_be_bytes());
        out[16] = 2;
        out[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        out[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        out[51..53].copy_from_slice(&(-1i16).to_be_bytes());
        out[53..57].copy_from_slice(&(-1i32).to_be_bytes());
        out[57..61].copy_from_slice(&count.to_be_bytes());
        seal_crc(&mut out);
        out
    }

    #[test]
    fn accepts_a_well_formed_batch() {
        let bytes = batch(3);
        let header = validate_produced(&bytes, 1 << 20).unwrap();
        assert_eq!(header.meta().record_count, 3);
        assert_eq!(header.codec(), 0);
    }

    #[test]
    fn refuses_each_kind_of_bad_batch() {
        let good = batch(2);
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(validate_produced(&flipped, 1 << 20), Err(BatchError::Corrupt(_))));
        assert!(matches!(validate_produced(&good[..40], 1 << 20), Err(BatchError::Corrupt(_))));
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert!(matches!(validate_produced(&two, 1 << 20), Err(BatchError::Invalid(_))));
        assert!(matches!(validate_produced(&good, 10), Err(BatchError::TooLarge { .. })));
        let mut old = good.clone();
        old[16] = 1;
        assert_eq!(validate_produced(&old, 1 << 20).unwrap_err(), BatchError::OldFormat(1));
        let mut control = good.clone();
        control[22] |= ATTRIBUTE_CONTROL as u8;
        seal_crc(&mut control);
        assert!(matches!(validate_produced(&control, 1 << 20), Err(BatchError::Invalid(_))));
        let mut miscounted = good.clone();
        miscounted[57..61].copy_from_slice(&5i32.to_be_bytes());
        seal_crc(&mut miscounted);
        assert!(matches!(validate_produced(&miscounted, 1 << 20), Err(BatchError::Invalid(_))));
    }

    #[test]
    fn the_broker_owned_bytes_are_outside_the_crc() {
        let mut bytes = batch(1);
        bytes[..8].copy_from_slice(&12345i64.to_be_bytes());
        bytes[12..16].copy_from_slice(&7i32.to_be_bytes());
        assert!(validate_produced(&bytes, 1 << 20).is_ok());
    }
}
