//! The native payload: a batch of records as one rkyv archive.
//!
//! A batch is archived once by the producer, validated once by the broker on produce
//! ([`validate_native_payload`]), stored as it arrived and read in place by consumers
//! ([`NativeBatchView`]): no record is decoded or copied between the producer and the consumer.
//! Keys, values and header values are byte vectors, never `String`, so validation checks bounds
//! and not UTF-8.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// What the entry header records about a batch; sent beside the payload on produce.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchMeta {
    /// A batch from a producer that is not idempotent (no producer id, epoch or sequence).
    pub fn new(record_count: u32, first_timestamp: i64, max_timestamp: i64) -> Self {
        Self {
            record_count,
            first_timestamp,
            max_timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the batch: the record's offset is the entry's base offset plus this.
    pub offset_delta: u32,
    /// Milliseconds after the batch's first timestamp (may be negative: clients set timestamps).
    pub timestamp_delta: i64,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone, as in Kafka.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<RecordHeader>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub records: Vec<Record>,
}

/// A record as a producer hands it over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

impl OwnedRecord {
    /// Bytes this record adds to a batch, roughly: what batching limits count.
    pub fn size_estimate(&self) -> usize {
        let field = |f: &Option<Vec<u8>>| f.as_ref().map_or(0, Vec::len);
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
        48 + field(&self.key) + field(&self.value) + headers
    }
}

/// Why a native payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    Invalid(String),
    CountMismatch { header: u32, archive: usize },
    OffsetDeltaGap { index: usize, found: u32 },
    TimestampMismatch { header: i64, computed: i64 },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(why) => write!(f, "invalid record archive: {why}"),
            Self::CountMismatch { header, archive } => {
                write!(f, "batch claims {header} records but holds {archive}")
            }
            Self::OffsetDeltaGap { index, found } => {
                write!(f, "record {index} has offset delta {found}")
            }
            Self::TimestampMismatch { header, computed } => {
                write!(f, "batch max timestamp {header} but records give {computed}")
            }
        }
    }
}

impl std::error::Error for BatchError {}

/// Accumulates records and archives them as one batch.
#[derive(Default)]
pub struct BatchBuilder {
    records: Vec<OwnedRecord>,
    bytes: usize,
}

impl BatchBuilder {
    pub fn push(&mut self, record: OwnedRecord) {
        self.bytes += record.size_estimate();
        self.records.push(record);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn size_estimate(&self) -> usize {
        self.bytes
    }

    /// Archives the records. Panics only if called with no records, which is a caller bug.
    pub fn build(self) -> (BatchMeta, AlignedVec) {
        assert!(!self.records.is_empty(), "an empty batch cannot be built");
        let first_timestamp = self.records[0].timestamp;
        let max_timestamp =
            self.records.iter().map(|r| r.timestamp).max().unwrap_or(first_timestamp);
        let batch = Batch {
            records: self
                .records
                .into_iter()
                .enumerate()
                .map(|(index, r)| Record {
                    offset_delta: index as u32,
                    timestamp_delta: r.timestamp.saturating_sub(first_timestamp),
                    key: r.key,
                    value: r.value,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(key, value)| RecordHeader { key, value })
                        .collect(),
                })
                .collect(),
        };
        let meta = BatchMeta::new(batch.records.len() as u32, first_timestamp, max_timestamp);
        // Serializing plain vectors into a growable buffer cannot fail.
        let bytes = rkyv::to_bytes::<rancor::Error>(&batch).expect("archiving a batch in memory");
        (meta, bytes)
    }
}

/// Checks an untrusted payload against the metadata that will go into its entry header: the
/// archive is well formed, offset deltas are dense from zero, and the timestamps agree.
pub fn validate_native_payload(payload: &[u8], meta: &BatchMeta) -> Result<(), BatchError> {
    let batch = rkyv::access::<ArchivedBatch, rancor::Error>(payload)
        .map_err(|e| BatchError::Invalid(e.to_string()))?;
    if batch.records.len() != meta.record_count as usize || batch.records.is_empty() {
        return Err(BatchError::CountMismatch {
            header: meta.record_count,
            archive: batch.records.len(),
        });
    }
    let mut max_timestamp = i64::MIN;
    for (index, record) in batch.records.iter().enumerate() {
        let found = record.offset_delta.to_native();
        if found as usize != index {
            return Err(BatchError::OffsetDeltaGap { index, found });
        }
        let timestamp = meta.first_timestamp.saturating_add(record.timestamp_delta.to_native());
        max_timestamp = max_timestamp.max(timestamp);
    }
    if max_timestamp != meta.max_timestamp {
        return Err(BatchError::TimestampMismatch {
            header: meta.max_timestamp,
            computed: max_timestamp,
        });
    }
    Ok(())
}

/// The records of one native entry, read in place.
pub struct NativeBatchView<'a> {
    batch: &'a ArchivedBatch,
    base_offset: u64,
    first_timestamp: i64,
}

impl<'a> NativeBatchView<'a> {
    /// Validates the archive (cheap: it grows with the record count, not the bytes). The payload
    /// must be 16-byte aligned in memory, as it is in every buffer Spate hands out.
    pub fn new(header: &crate::record::EntryHeader, payload: &'a [u8]) -> Result<Self, BatchError> {
        let batch = rkyv::access::<ArchivedBatch, rancor::Error>(payload)
            .map_err(|e| BatchError::Invalid(e.to_string()))?;
        Ok(Self {
            batch,
            base_offset: header.base_offset().0,
            first_timestamp: header.first_timestamp.get(),
        })
    }

    pub fn records(&self) -> impl Iterator<Item = RecordView<'a>> + '_ {
        let base_offset = self.base_offset;
        let first_timestamp = self.first_timestamp;
        self.batch.records.iter().map(move |record| RecordView {
            offset: base_offset + u64::from(record.offset_delta.to_native()),
            timestamp: first_timestamp.saturating_add(record.timestamp_delta.to_native()),
            record,
        })
    }
}

/// One record, borrowed from the fetched bytes.
pub struct RecordView<'a> {
    pub offset: u64,
    pub timestamp: i64,
    record: &'a ArchivedRecord,
}

impl<'a> RecordView<'a> {
    pub fn key(&self) -> Option<&'a [u8]> {
        self.record.key.as_ref().map(|k| k.as_slice())
    }

    pub fn value(&self) -> Option<&'a [u8]> {
        self.record.value.as_ref().map(|v| v.as_slice())
    }

    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.record.headers.iter().map(|h| (h.key.as_slice(), h.value.as_slice()))
    }

    pub fn to_owned_record(&self) -> OwnedRecord {
        OwnedRecord {
            key: self.key().map(<[u8]>::to_vec),
            value: self.value().map(<[u8]>::to_vec),
            headers: self.headers().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
            timestamp: self.timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64) -> OwnedRecord {
        OwnedRecord {
            key: (i % 2 == 0).then(|| format!("key-{i}").into_bytes()),
            value: Some(vec![i as u8; i as usize]),
            headers: vec![(b"h".to_vec(), i.to_le_bytes().to_vec())],
            timestamp: 1_000 + (i * 7) % 5,
        }
    }

    #[test]
    fn built_batches_validate_and_read_back() {
        let mut builder = BatchBuilder::default();
        let originals: Vec<_> = (0..10).map(record).collect();
        originals.iter().cloned().for_each(|r| builder.push(r));
        let (meta, bytes) = builder.build();
        validate_native_payload(&bytes, &meta).unwrap();
        let header = crate::record::EntryHeader::new(
            crate::record::PayloadFormat::Native,
            crate::types::Offset(100),
            crate::types::LeaderEpoch(0),
            &meta,
            bytes.len() as u32,
            crc32fast::hash(&bytes),
        );
        let view = NativeBatchView::new(&header, &bytes).unwrap();
        let read: Vec<_> = view.records().map(|r| (r.offset, r.to_owned_record())).collect();
        assert_eq!(read.len(), 10);
        for (i, (offset, rec)) in read.into_iter().enumerate() {
            assert_eq!(offset, 100 + i as u64);
            assert_eq!(rec, originals[i]);
        }
    }

    #[test]
    fn metadata_that_disagrees_with_the_archive_is_refused() {
        let mut builder = BatchBuilder::default();
        (0..3).map(record).for_each(|r| builder.push(r));
        let (meta, bytes) = builder.build();
        let wrong_count = BatchMeta { record_count: 4, ..meta };
        assert!(matches!(
            validate_native_payload(&bytes, &wrong_count),
            Err(BatchError::CountMismatch { .. })
        ));
        let wrong_time = BatchMeta { max_timestamp: meta.max_timestamp + 1, ..meta };
        assert!(matches!(
            validate_native_payload(&bytes, &wrong_time),
            Err(BatchError::TimestampMismatch { .. })
        ));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let meta = BatchMeta::new(1, 0, 0);
        let mut garbage = AlignedVec::<16>::new();
        for i in 0..4096u32 {
            garbage.push((i.wrapping_mul(2_654_435_761) >> 13) as u8);
        }
        for len in [0, 1, 8, 16, 64, 4096] {
            assert!(validate_native_payload(&garbage[..len], &meta).is_err());
        }
    }
}
