//! A validated batch still in the buffer it was received into, with room for its entry header.
//!
//! The connection reads a produce body into a 16-aligned buffer that starts with
//! [`ENTRY_HEADER_BYTES`] spare bytes. Once the owning shard assigns the base offset,
//! [`PendingEntry::seal`] writes the header just before the payload, zeroes the padding and
//! freezes the buffer: the entry that goes to the tail cache and the segment writer is the
//! network buffer itself, never copied.
//!
//! A Kafka batch is copied once instead ([`PendingEntry::kafka`]): one request carries batches
//! for many partitions back to back, with no room for a header between them. Sealing it also
//! writes the base offset into the batch's own header, the bytes Kafka's CRC leaves to brokers.

use bytes::Bytes;
use rkyv::util::AlignedVec;
use zerocopy::IntoBytes;

use crate::record::entry::{
    entry_len, EntryHeader, PayloadFormat, ENTRY_ALIGN, ENTRY_HEADER_BYTES,
};
use crate::record::BatchMeta;
use crate::types::{LeaderEpoch, Offset};

/// Leading bytes of a Kafka batch the broker writes: base offset, length, leader epoch.
const BROKER_OWNED_BYTES: usize = crate::record::kafka_batch::BROKER_OWNED_BYTES;
/// A partition's leader epoch until one is assigned (the cluster assigns them): what entries are
/// stamped with and what Metadata and Fetch report.
pub const LEADER_EPOCH: LeaderEpoch = LeaderEpoch(0);

/// Memory a sealed entry may keep alive beyond its own bytes before it is copied out of its
/// receive buffer: the usual prefix, meta and padding are far below this.
pub const SEAL_SLACK_BYTES_MAX: usize = 4096;

pub struct PendingEntry {
    buf: AlignedVec<ENTRY_ALIGN>,
    header_at: usize,
    payload_len: usize,
    /// CRC-32 of the payload; of a Kafka payload, of everything after its broker-owned bytes.
    payload_crc: u32,
    pub meta: BatchMeta,
    pub format: PayloadFormat,
}

impl PendingEntry {
    /// `buf[header_at + 64 ..]` holds the payload; the bytes before it may be overwritten.
    /// Returns `None` when the buffer cannot hold the header and padding around the payload.
    pub fn new(
        mut buf: AlignedVec<ENTRY_ALIGN>,
        header_at: usize,
        payload_len: usize,
        payload_crc: u32,
        meta: BatchMeta,
        format: PayloadFormat,
    ) -> Option<Self> {
        if !header_at.is_multiple_of(ENTRY_ALIGN) {
            return None;
        }
        let end = header_at.checked_add(entry_len(payload_len))?;
        if buf.len() < header_at + ENTRY_HEADER_BYTES + payload_len {
            return None;
        }
        if buf.len() < end {
            buf.resize(end, 0);
        }
        Some(Self { buf, header_at, payload_len, payload_crc, meta, format })
    }

    /// The payload's length: the batch or archive as the client sent it.
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// A native batch archive the broker built itself (committed offsets), copied behind room
    /// for its header.
    pub fn native(meta: BatchMeta, archive: &[u8]) -> Option<Self> {
        let mut buf = AlignedVec::<ENTRY_ALIGN>::with_capacity(entry_len(archive.len()));
        buf.resize(ENTRY_HEADER_BYTES, 0);
        buf.extend_from_slice(archive);
        let crc = crc32fast::hash(archive);
        Self::new(buf, 0, archive.len(), crc, meta, PayloadFormat::Native)
    }

    /// A Kafka RecordBatch v2 (already validated), copied into a buffer of its own.
    pub fn kafka(batch: &[u8], meta: BatchMeta) -> Option<Self> {
        let owned = batch.get(..BROKER_OWNED_BYTES)?.len();
        let mut buf = AlignedVec::<ENTRY_ALIGN>::with_capacity(entry_len(batch.len()));
        buf.resize(ENTRY_HEADER_BYTES, 0);
        buf.extend_from_slice(batch);
        let tail_crc = crc32fast::hash(&batch[owned..]);
        Self::new(buf, 0, batch.len(), tail_crc, meta, PayloadFormat::Kafka)
    }

    /// Writes the header for `base_offset` in `leader_epoch` (also into a Kafka batch's partition
    /// leader epoch) and hands out the finished entry with the bytes of
    /// memory it keeps alive (what caches must charge for it). When the receive buffer is much
    /// larger than the entry (a large meta in front of a small batch), the entry is copied out so
    /// a cached entry never pins more than [`SEAL_SLACK_BYTES_MAX`] beyond its own size.
    pub fn seal(mut self, base_offset: Offset, leader_epoch: LeaderEpoch) -> (Bytes, usize) {
        let start = self.header_at;
        if self.format == PayloadFormat::Kafka {
            let batch = start + ENTRY_HEADER_BYTES;
            let owned = &mut self.buf[batch..batch + BROKER_OWNED_BYTES];
            owned[..8].copy_from_slice(&(base_offset.0 as i64).to_be_bytes());
            owned[12..16].copy_from_slice(&leader_epoch.0.to_be_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(owned);
            let tail_len = (self.payload_len - BROKER_OWNED_BYTES) as u64;
            crc.combine(&crc32fast::Hasher::new_with_initial_len(self.payload_crc, tail_len));
            self.payload_crc = crc.finalize();
        }
        let header = EntryHeader::new(
            self.format,
            base_offset,
            leader_epoch,
            &self.meta,
            self.payload_len as u32,
            self.payload_crc,
        );
        let payload_end = start + ENTRY_HEADER_BYTES + self.payload_len;
        let end = start + entry_len(self.payload_len);
        self.buf[start..start + ENTRY_HEADER_BYTES].copy_from_slice(header.as_bytes());
        self.buf[payload_end..end].fill(0);
        if self.buf.capacity() - (end - start) > SEAL_SLACK_BYTES_MAX {
            let mut exact = AlignedVec::<ENTRY_ALIGN>::with_capacity(end - start);
            exact.extend_from_slice(&self.buf[start..end]);
            let footprint = exact.capacity();
            return (Bytes::from_owner(exact), footprint);
        }
        let footprint = self.buf.capacity();
        (Bytes::from_owner(self.buf).slice(start..end), footprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::entry::parse_entry;

    #[test]
    fn seals_in_place_into_a_valid_entry() {
        let payload = b"some payload bytes";
        let mut buf = AlignedVec::<ENTRY_ALIGN>::new();
        buf.extend_from_slice(&[0xAA; 32]);
        buf.extend_from_slice(&[0xBB; ENTRY_HEADER_BYTES]);
        buf.extend_from_slice(payload);
        let meta = BatchMeta::new(2, 1, 2);
        let pending = PendingEntry::new(
            buf,
            32,
            payload.len(),
            crc32fast::hash(payload),
            meta,
            PayloadFormat::Native,
        )
        .unwrap();
        let (entry, footprint) = pending.seal(Offset(77), LeaderEpoch(0));
        assert!(footprint >= entry.len());
        assert_eq!(entry.len() % ENTRY_ALIGN, 0);
        assert_eq!(entry.as_ptr() as usize % ENTRY_ALIGN, 0);
        let (header, read) = parse_entry(&entry).unwrap();
        assert_eq!(read, payload);
        assert_eq!(header.base_offset(), Offset(77));
    }

    #[test]
    fn a_small_entry_in_a_large_buffer_is_copied_out() {
        let payload = [7u8; 100];
        let mut buf = AlignedVec::<ENTRY_ALIGN>::new();
        buf.resize(1 << 20, 0xCC);
        let header_at = (1 << 20) - 256;
        buf[header_at + ENTRY_HEADER_BYTES..header_at + ENTRY_HEADER_BYTES + 100]
            .copy_from_slice(&payload);
        let meta = BatchMeta::new(1, 0, 0);
        let pending = PendingEntry::new(
            buf,
            header_at,
            100,
            crc32fast::hash(&payload),
            meta,
            PayloadFormat::Native,
        )
        .unwrap();
        let (entry, footprint) = pending.seal(Offset(0), LeaderEpoch(0));
        assert!(footprint < 4096, "footprint {footprint}");
        assert_eq!(parse_entry(&entry).unwrap().1, payload);
    }

    #[test]
    fn a_kafka_batch_gets_its_base_offset_and_a_valid_entry_checksum() {
        let batch = crate::record::kafka_batch::tests::batch(4);
        let header = crate::record::kafka_batch::validate_produced(&batch, 1 << 20).unwrap();
        let pending = PendingEntry::kafka(&batch, header.meta()).unwrap();
        let (entry, _) = pending.seal(Offset(1000), LeaderEpoch(0));
        let (entry_header, payload) = parse_entry(&entry).unwrap();
        assert_eq!(entry_header.format(), Some(PayloadFormat::Kafka));
        assert_eq!(entry_header.next_offset(), Offset(1004));
        assert_eq!(&payload[..8], &1000i64.to_be_bytes());
        assert_eq!(&payload[BROKER_OWNED_BYTES..], &batch[BROKER_OWNED_BYTES..]);
        assert!(crate::record::kafka_batch::validate_produced(payload, 1 << 20).is_ok());
    }

    #[test]
    fn refuses_buffers_without_room() {
        let buf = AlignedVec::<ENTRY_ALIGN>::new();
        let meta = BatchMeta::new(1, 0, 0);
        assert!(PendingEntry::new(buf, 0, 10, 0, meta, PayloadFormat::Native).is_none());
    }
}
