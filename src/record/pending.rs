//! A validated batch still in the buffer it was received into, with room for its entry header.
//!
//! The connection reads a produce body into a 16-aligned buffer that starts with
//! [`ENTRY_HEADER_BYTES`] spare bytes. Once the owning shard assigns the base offset,
//! [`PendingEntry::seal`] writes the header just before the payload, zeroes the padding and
//! freezes the buffer: the entry that goes to the tail cache and the segment writer is the
//! network buffer itself, never copied.

use bytes::Bytes;
use rkyv::util::AlignedVec;
use zerocopy::IntoBytes;

use crate::record::entry::{
    entry_len, EntryHeader, PayloadFormat, ENTRY_ALIGN, ENTRY_HEADER_BYTES,
};
use crate::record::BatchMeta;

pub struct PendingEntry {
    buf: AlignedVec<ENTRY_ALIGN>,
    header_at: usize,
    payload_len: usize,
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
        Some(Self {
            buf,
            header_at,
            payload_len,
            payload_crc,
            meta,
            format,
        })
    }

    pub fn entry_len(&self) -> usize {
        entry_len(self.payload_len)
    }

    pub fn payload(&self) -> &[u8] {
        let start = self.header_at + ENTRY_HEADER_BYTES;
        &self.buf[start..start + self.payload_len]
    }

    /// Writes the header for `base_offset` and hands out the finished entry.
    pub fn seal(mut self, base_offset: u64) -> Bytes {
        let header = EntryHeader::new(
            self.format,
            base_offset,
            &self.meta,
            self.payload_len as u32,
            self.payload_crc,
        );
        let start = self.header_at;
        let payload_end = start + ENTRY_HEADER_BYTES + self.payload_len;
        let end = start + entry_len(self.payload_len);
        self.buf[start..start + ENTRY_HEADER_BYTES].copy_from_slice(header.as_bytes());
        self.buf[payload_end..end].fill(0);
        Bytes::from_owner(self.buf).slice(start..end)
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
        let meta = BatchMeta {
            record_count: 2,
            first_timestamp: 1,
            max_timestamp: 2,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        };
        let pending = PendingEntry::new(
            buf,
            32,
            payload.len(),
            crc32fast::hash(payload),
            meta,
            PayloadFormat::Native,
        )
        .unwrap();
        let entry = pending.seal(77);
        assert_eq!(entry.len() % ENTRY_ALIGN, 0);
        assert_eq!(entry.as_ptr() as usize % ENTRY_ALIGN, 0);
        let (header, read) = parse_entry(&entry).unwrap();
        assert_eq!(read, payload);
        assert_eq!(header.base_offset(), 77);
    }

    #[test]
    fn refuses_buffers_without_room() {
        let buf = AlignedVec::<ENTRY_ALIGN>::new();
        let meta = BatchMeta {
            record_count: 1,
            first_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        };
        assert!(PendingEntry::new(buf, 0, 10, 0, meta, PayloadFormat::Native).is_none());
    }
}
