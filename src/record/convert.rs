//! Cross-protocol reads: one stored entry re-encoded in the other protocol's record format.
//!
//! An entry is stored in the format its producer sent. A Kafka consumer reading a native entry
//! gets an uncompressed RecordBatch v2 built from it; a native consumer reading a Kafka entry
//! gets a native entry built from its records, decompressed first when the producer compressed
//! them. Offsets, timestamps, keys, values and headers (duplicates and order kept) carry over.

use bytes::{Bytes, BytesMut};

use crate::record::batch::NativeBatchView;
use crate::record::codecs;
use crate::record::entry::{entries, Check};
use crate::record::kafka_batch::{
    self, BatchHeader, ATTRIBUTE_LOG_APPEND_TIME, BATCH_HEADER_BYTES,
};
use crate::record::{BatchBuilder, EntryHeader, OwnedRecord, PayloadFormat};

/// Appends a native entry's records to `out` as one uncompressed Kafka batch.
pub fn native_to_kafka(
    header: &EntryHeader,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<(), String> {
    let view = NativeBatchView::new(header, payload).map_err(|e| e.to_string())?;
    let base_offset = header.base_offset().0;
    let first_timestamp = header.first_timestamp.get();
    let start = out.len();
    out.resize(start + BATCH_HEADER_BYTES, 0);
    let mut count = 0i32;
    let mut body = Vec::new();
    for record in view.records() {
        body.clear();
        body.push(0); // record attributes
                      // Wrapping: timestamps are the client's, and their difference is what the delta holds.
        put_varlong(&mut body, record.timestamp.wrapping_sub(first_timestamp));
        put_varlong(&mut body, (record.offset - base_offset) as i64);
        put_nullable(&mut body, record.key());
        put_nullable(&mut body, record.value());
        let headers: Vec<_> = record.headers().collect();
        put_varlong(&mut body, headers.len() as i64);
        for (key, value) in headers {
            put_nullable(&mut body, Some(key));
            put_nullable(&mut body, Some(value));
        }
        let mut length = Vec::with_capacity(5);
        put_varlong(&mut length, body.len() as i64);
        out.extend_from_slice(&length);
        out.extend_from_slice(&body);
        count += 1;
    }
    let batch_len = (out.len() - start - 12) as i32;
    let fields = &mut out[start..start + BATCH_HEADER_BYTES];
    fields[0..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
    fields[8..12].copy_from_slice(&batch_len.to_be_bytes());
    fields[12..16].copy_from_slice(&header.leader_epoch().0.to_be_bytes());
    fields[16] = 2;
    fields[21..23].copy_from_slice(&0i16.to_be_bytes());
    fields[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    fields[27..35].copy_from_slice(&first_timestamp.to_be_bytes());
    fields[35..43].copy_from_slice(&header.max_timestamp.get().to_be_bytes());
    fields[43..51].copy_from_slice(&header.producer_id.get().to_be_bytes());
    fields[51..53].copy_from_slice(&header.producer_epoch.get().to_be_bytes());
    fields[53..57].copy_from_slice(&header.base_sequence.get().to_be_bytes());
    fields[57..61].copy_from_slice(&count.to_be_bytes());
    kafka_batch::seal_crc(&mut out[start..]);
    Ok(())
}

/// A native entry holding the records of a stored Kafka batch.
pub fn kafka_to_native(header: &EntryHeader, payload: &[u8]) -> Result<Bytes, String> {
    let records = kafka_records(payload)?;
    let mut builder = BatchBuilder::default();
    records.into_iter().for_each(|r| builder.push(r));
    if builder.is_empty() {
        return Err("a stored Kafka batch without records".into());
    }
    let (meta, archive) = builder.build();
    let entry_header = EntryHeader::new(
        PayloadFormat::Native,
        header.base_offset(),
        header.leader_epoch(),
        &meta,
        archive.len() as u32,
        crc32fast::hash(&archive),
    );
    let mut entry =
        rkyv::util::AlignedVec::<16>::with_capacity(crate::record::entry::entry_len(archive.len()));
    entry.extend_from_slice(zerocopy::IntoBytes::as_bytes(&entry_header));
    entry.extend_from_slice(&archive);
    entry.resize(crate::record::entry::entry_len(archive.len()), 0);
    Ok(Bytes::from_owner(entry))
}

/// Read entries as a native reader gets them: native entries as stored (zero-copy slices),
/// Kafka entries converted. Entries come whole and checked from the log.
pub fn native_entries(chunks: Vec<Bytes>) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let mut native_from = 0;
        for entry in entries(&chunk, Check::Header) {
            let entry = entry.map_err(|e| e.to_string())?;
            if entry.header.format() == Some(PayloadFormat::Kafka) {
                if native_from < entry.at {
                    out.push(chunk.slice(native_from..entry.at));
                }
                out.push(kafka_to_native(&entry.header, entry.payload)?);
                native_from = entry.at + entry.bytes.len();
            }
        }
        if native_from == 0 {
            out.push(chunk);
        } else if native_from < chunk.len() {
            out.push(chunk.slice(native_from..));
        }
    }
    Ok(out)
}

/// Every record of one Kafka batch, decompressed and decoded.
pub fn kafka_records(batch: &[u8]) -> Result<Vec<OwnedRecord>, String> {
    let mut records = Vec::new();
    for_each_record(batch, |record| {
        records.push(OwnedRecord {
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: record.headers.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
            timestamp: record.timestamp,
        })
    })?;
    Ok(records)
}

/// One record of a Kafka batch, borrowed from the (decompressed) batch.
pub struct KafkaRecord<'a> {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// A null header value reads as empty.
    pub headers: Vec<(&'a [u8], &'a [u8])>,
}

/// The most one stored batch may decompress to when its records are read: a producer can store
/// a small batch that claims (or expands to) gigabytes, and a reader must not let it take a
/// shard's memory.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Calls `visit` with each record of one Kafka batch, decompressing it first if needed (at most
/// [`DECOMPRESSED_BYTES_MAX`]); uncompressed records are read in place.
pub fn for_each_record(batch: &[u8], mut visit: impl FnMut(KafkaRecord<'_>)) -> Result<(), String> {
    let header = BatchHeader::read(batch).ok_or("a batch shorter than its header")?;
    let records = batch.get(BATCH_HEADER_BYTES..).unwrap_or_default();
    if header.codec() == 0 {
        return visit_records(records, &header, &mut visit);
    }
    let plain = codecs::decompress(header.codec(), records, DECOMPRESSED_BYTES_MAX)
        .map_err(|e| format!("decompressing a Kafka batch: {e}"))?;
    visit_records(&plain, &header, &mut visit)
}

pub(crate) fn visit_records(
    records: &[u8],
    header: &BatchHeader,
    visit: &mut impl FnMut(KafkaRecord<'_>),
) -> Result<(), String> {
    let log_append_time = header.attributes.get() & ATTRIBUTE_LOG_APPEND_TIME != 0;
    let base_offset = header.base_offset.get();
    let mut reader = Reader { bytes: records };
    for _ in 0..header.records_count.get().max(0) {
        let length = usize::try_from(reader.varint()?).map_err(|_| "negative record length")?;
        let mut record = Reader { bytes: reader.take(length)? };
        record.take(1)?; // attributes
        let timestamp_delta = record.varint()?;
        let offset_delta = record.varint()?;
        let key = record.nullable()?;
        let value = record.nullable()?;
        let header_count = usize::try_from(record.varint()?).unwrap_or(0);
        let mut headers = Vec::with_capacity(header_count.min(64));
        for _ in 0..header_count {
            let name = record.nullable()?.unwrap_or_default();
            let value = record.nullable()?.unwrap_or_default();
            headers.push((name, value));
        }
        let timestamp = if log_append_time {
            header.max_timestamp.get()
        } else {
            header.base_timestamp.get().saturating_add(timestamp_delta)
        };
        let offset = u64::try_from(base_offset.saturating_add(offset_delta)).unwrap_or(0);
        visit(KafkaRecord { offset, timestamp, key, value, headers });
    }
    Ok(())
}

/// Kafka's zigzag varints over a byte slice, every read bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err(format!("record needs {n} bytes, {} left", self.bytes.len()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<i64, String> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self.take(1)?.first().ok_or("empty")?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn nullable(&mut self) -> Result<Option<&'a [u8]>, String> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| "length overflow")?;
        self.take(len).map(Some)
    }
}

fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn put_nullable(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => put_varlong(out, -1),
        Some(bytes) => {
            put_varlong(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::entry::parse_entry;

    fn originals() -> Vec<OwnedRecord> {
        (0..5)
            .map(|i| OwnedRecord {
                key: (i % 2 == 0).then(|| format!("key-{i}").into_bytes()),
                value: (i != 3).then(|| vec![b'x'; i * 100]),
                headers: vec![(b"h".to_vec(), vec![i as u8]), (b"h".to_vec(), vec![])],
                timestamp: 1_700_000_000_000 + i as i64,
            })
            .collect()
    }

    fn native_entry(base_offset: u64) -> Vec<u8> {
        let mut builder = BatchBuilder::default();
        originals().into_iter().for_each(|r| builder.push(r));
        let (meta, archive) = builder.build();
        let header = EntryHeader::new(
            PayloadFormat::Native,
            crate::types::Offset(base_offset),
            crate::types::LeaderEpoch(3),
            &meta,
            archive.len() as u32,
            crc32fast::hash(&archive),
        );
        let mut entry = zerocopy::IntoBytes::as_bytes(&header).to_vec();
        entry.extend_from_slice(&archive);
        entry.resize(crate::record::entry::entry_len(archive.len()), 0);
        entry
    }

    #[test]
    fn native_to_kafka_and_back_keeps_every_field() {
        let entry = native_entry(40);
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&entry);
        let (header, payload) = parse_entry(&aligned).unwrap();
        let mut kafka = BytesMut::new();
        native_to_kafka(&header, payload, &mut kafka).unwrap();
        let checked = kafka_batch::validate_produced(&kafka, 1 << 20).unwrap();
        assert_eq!(checked.base_offset.get(), 40);
        assert_eq!(i32::from_be_bytes(kafka[12..16].try_into().unwrap()), 3, "leader epoch");
        assert_eq!(kafka_records(&kafka).unwrap(), originals());
        let back = kafka_to_native(&header, &kafka).unwrap();
        let (back_header, back_payload) = parse_entry(&back).unwrap();
        let (base, epoch) = (back_header.base_offset(), back_header.leader_epoch());
        assert_eq!((base.0, epoch.0), (40, 3));
        let view = NativeBatchView::new(&back_header, back_payload).unwrap();
        let read: Vec<_> = view.records().map(|r| r.to_owned_record()).collect();
        assert_eq!(read, originals());
    }

    #[test]
    fn every_codec_decompresses_and_bombs_are_refused() {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let record = |i: i64| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32 - 1,
            timestamp: 1_000 + i,
            key: None,
            value: Some(Bytes::from(vec![b'z'; 10_000])),
            headers: Default::default(),
        };
        let records: Vec<Record> = (0..20).map(record).collect();
        for compression in
            [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        {
            let mut batch = BytesMut::new();
            let options = RecordEncodeOptions { version: 2, compression };
            RecordBatchEncoder::encode(&mut batch, &records, &options).unwrap();
            let mut count = 0;
            for_each_record(&batch, |r| {
                assert_eq!(r.value.map(<[u8]>::len), Some(10_000));
                count += 1;
            })
            .unwrap();
            assert_eq!(count, 20, "{compression:?}");
            let codec = BatchHeader::read(&batch).unwrap().codec();
            let compressed = &batch[BATCH_HEADER_BYTES..];
            let bomb = codecs::decompress(codec, compressed, 100_000);
            assert!(bomb.is_err(), "{compression:?} bomb");
        }
        // A raw snappy block claiming 4 GiB is refused before anything is allocated for it.
        let claim = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert!(codecs::decompress(codecs::SNAPPY, &claim, DECOMPRESSED_BYTES_MAX).is_err());
    }

    #[test]
    fn truncated_records_are_an_error() {
        let entry = native_entry(0);
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&entry);
        let (header, payload) = parse_entry(&aligned).unwrap();
        let mut kafka = BytesMut::new();
        native_to_kafka(&header, payload, &mut kafka).unwrap();
        assert!(kafka_records(&kafka[..kafka.len() - 10]).is_err());
    }
}
