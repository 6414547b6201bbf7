//! The log entry: a fixed little-endian header followed by a payload, padded to [`ENTRY_ALIGN`].
//!
//! ```text
//!  offset  size  field
//!       0     4  magic            "SPE1" (0x3145_5053 little-endian)
//!       4     4  crc              CRC-32 (IEEE) of bytes 8..64 of the header, then the payload
//!       8     4  payload_len      payload bytes, without padding
//!      12     1  version          entry format version (2; 1 is read too)
//!      13     1  format           payload format: 1 = native rkyv batch, 2 = Kafka RecordBatch v2
//!      14     2  flags            reserved, 0
//!      16     8  base_offset      offset of the first record, assigned by the broker
//!      24     4  record_count     records in the payload (> 0)
//!      28     4  leader_epoch     the leader epoch it was appended in (version 2; version 1
//!                                  wrote 0 here, read as epoch 0)
//!      32     8  first_timestamp  ms since the epoch, of the first record
//!      40     8  max_timestamp    ms since the epoch, largest in the batch
//!      48     8  producer_id      -1 when not idempotent
//!      56     2  producer_epoch
//!      58     2  reserved         0
//!      60     4  base_sequence
//!      64     .  payload, then zeros up to the next multiple of 16
//! ```
//!
//! The padding keeps every payload 16-byte aligned relative to the start of its entry, so an rkyv
//! archive can be read in place from any buffer that is itself 16-aligned at an entry start. The
//! checksum covers the header (after the crc) and the payload, so a flipped bit in an offset or a
//! timestamp is caught as surely as one in a value.
//!
//! Every later version keeps the frame: the magic, the crc, `payload_len` (within
//! [`ENTRY_PAYLOAD_BYTES_MAX`]) and what the checksum covers. An older build can then tell an entry a newer build wrote (magic and checksum
//! verify, only the version or format is unknown) from a torn one, and stops rather than cut the
//! log there ([`written_by_newer_build`]).

use zerocopy::little_endian::{I16, I32, I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::types::{LeaderEpoch, Offset};

/// Bytes in an [`EntryHeader`].
pub const ENTRY_HEADER_BYTES: usize = 64;
/// Every entry starts and ends on this boundary; rkyv archives need 16-byte alignment.
pub const ENTRY_ALIGN: usize = 16;
/// "SPE1" read as a little-endian u32.
pub const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"SPE1");
/// The entry version this build writes: 2 added the leader epoch (KIP-101's epoch in every
/// batch). Version 1 entries, with zeros where the epoch is, are read as epoch 0.
pub const ENTRY_VERSION: u8 = 2;
/// The oldest entry version this build reads.
const ENTRY_VERSION_OLDEST: u8 = 1;
/// The largest payload an entry header may claim. A bit-flipped length must not make recovery
/// or a reader allocate gigabytes; no configurable message size may exceed this.
pub const ENTRY_PAYLOAD_BYTES_MAX: u32 = 256 * 1024 * 1024;

const _: () = assert!(ENTRY_HEADER_BYTES.is_multiple_of(ENTRY_ALIGN));
const _: () = assert!(std::mem::size_of::<EntryHeader>() == ENTRY_HEADER_BYTES);

/// How the payload after the header is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PayloadFormat {
    /// An rkyv archive of [`crate::record::batch::Batch`].
    Native = 1,
    /// A Kafka RecordBatch v2 as the producer sent it, or as its topic's settings made it
    /// (`conform.rs`).
    Kafka = 2,
}

impl PayloadFormat {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Native),
            2 => Some(Self::Kafka),
            _ => None,
        }
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct EntryHeader {
    pub magic: U32,
    pub crc: U32,
    pub payload_len: U32,
    pub version: u8,
    pub format: u8,
    pub flags: U16,
    pub base_offset: U64,
    pub record_count: U32,
    pub leader_epoch: I32,
    pub first_timestamp: I64,
    pub max_timestamp: I64,
    pub producer_id: I64,
    pub producer_epoch: I16,
    pub reserved2: U16,
    pub base_sequence: I32,
}

/// Why bytes are not a valid entry. Recovery stops at the first of these; a reader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryError {
    /// The buffer ends before the entry does.
    Truncated {
        need: usize,
        have: usize,
    },
    /// The header is all zeros: the preallocated, never-written end of a segment.
    Zeroed,
    BadMagic {
        found: u32,
    },
    BadVersion {
        found: u8,
    },
    BadFormat {
        found: u8,
    },
    PayloadTooLarge {
        len: u32,
        max: u32,
    },
    EmptyBatch,
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    /// The entry is intact but not the one the log expected next.
    UnexpectedOffset {
        expected: Offset,
        found: Offset,
    },
}

impl std::fmt::Display for EntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { need, have } => {
                write!(f, "entry truncated: need {need} bytes, have {have}")
            }
            Self::Zeroed => write!(f, "zeroed header (unwritten space)"),
            Self::BadMagic { found } => write!(f, "bad entry magic {found:#010x}"),
            Self::BadVersion { found } => write!(f, "unknown entry version {found}"),
            Self::BadFormat { found } => write!(f, "unknown payload format {found}"),
            Self::PayloadTooLarge { len, max } => {
                write!(f, "payload length {len} exceeds the limit {max}")
            }
            Self::EmptyBatch => write!(f, "entry with zero records"),
            Self::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            Self::UnexpectedOffset { expected, found } => {
                write!(f, "entry has base offset {found}, expected {expected}")
            }
        }
    }
}

impl std::error::Error for EntryError {}

/// Bytes an entry with this payload length occupies in the log, padding included.
pub fn entry_len(payload_len: usize) -> usize {
    ENTRY_HEADER_BYTES + payload_len.next_multiple_of(ENTRY_ALIGN)
}

impl EntryHeader {
    /// A header for `meta` at `base_offset`, with its checksum computed from the payload's own
    /// CRC so the payload is not read a second time.
    pub fn new(
        format: PayloadFormat,
        base_offset: Offset,
        leader_epoch: LeaderEpoch,
        meta: &crate::record::BatchMeta,
        payload_len: u32,
        payload_crc: u32,
    ) -> Self {
        let mut header = EntryHeader {
            magic: ENTRY_MAGIC.into(),
            crc: 0.into(),
            payload_len: payload_len.into(),
            version: ENTRY_VERSION,
            format: format as u8,
            flags: 0.into(),
            base_offset: base_offset.0.into(),
            record_count: meta.record_count.into(),
            leader_epoch: leader_epoch.0.into(),
            first_timestamp: meta.first_timestamp.into(),
            max_timestamp: meta.max_timestamp.into(),
            producer_id: meta.producer_id.into(),
            producer_epoch: meta.producer_epoch.into(),
            reserved2: 0.into(),
            base_sequence: meta.base_sequence.into(),
        };
        header.crc = header.checksum_with(payload_crc, payload_len as u64).into();
        header
    }

    /// The entry checksum: the header after the crc field, then the payload whose CRC is given.
    fn checksum_with(&self, payload_crc: u32, payload_len: u64) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.as_bytes()[8..]);
        hasher.combine(&crc32fast::Hasher::new_with_initial_len(payload_crc, payload_len));
        hasher.finalize()
    }

    pub fn base_offset(&self) -> Offset {
        Offset(self.base_offset.get())
    }

    /// The leader epoch the entry was appended in.
    pub fn leader_epoch(&self) -> LeaderEpoch {
        LeaderEpoch(self.leader_epoch.get())
    }

    fn version_known(&self) -> bool {
        (ENTRY_VERSION_OLDEST..=ENTRY_VERSION).contains(&self.version)
    }

    /// The offset after the last record of this entry.
    pub fn next_offset(&self) -> Offset {
        self.base_offset().plus(u64::from(self.record_count.get()))
    }

    /// Bytes this entry occupies in the log, padding included.
    pub fn entry_len(&self) -> usize {
        entry_len(self.payload_len.get() as usize)
    }

    /// The batch facts this header was written from.
    pub fn meta(&self) -> crate::record::BatchMeta {
        crate::record::BatchMeta {
            record_count: self.record_count.get(),
            first_timestamp: self.first_timestamp.get(),
            max_timestamp: self.max_timestamp.get(),
            producer_id: self.producer_id.get(),
            producer_epoch: self.producer_epoch.get(),
            base_sequence: self.base_sequence.get(),
        }
    }

    pub fn format(&self) -> Option<PayloadFormat> {
        PayloadFormat::from_u8(self.format)
    }
}

/// One entry of a buffer of entries stored back to back: its header, where it starts in the
/// buffer, its payload (without padding) and its whole bytes (with padding).
#[derive(Clone, Copy, Debug)]
pub struct StoredEntry<'a> {
    pub header: EntryHeader,
    pub at: usize,
    pub payload: &'a [u8],
    pub bytes: &'a [u8],
}

/// Whether [`entries`] verifies each entry's checksum: [`Check::Checksum`] for bytes from outside
/// (a client's fetch, a replay), [`Check::Header`] for bytes the log read path already verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Header,
    Checksum,
}

/// The entries stored back to back in `buf`, each bounds-checked (and checksummed as `check`
/// says). The first bad or cut-off entry is yielded as an error and ends the walk. The one way
/// to walk stored entries in memory; the recovery scan (`log::scan`) and the log's windowed
/// readers walk the disk in pieces instead.
pub fn entries(buf: &[u8], check: Check) -> Entries<'_> {
    Entries { buf, at: 0, check, failed: false }
}

pub struct Entries<'a> {
    buf: &'a [u8],
    at: usize,
    check: Check,
    failed: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<StoredEntry<'a>, EntryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.at..];
        let parsed = match self.check {
            Check::Checksum => parse_entry(rest).map(|(header, _)| header),
            Check::Header => parse_header(rest).and_then(|header| {
                let need = header.entry_len();
                match rest.len() >= need {
                    true => Ok(header),
                    false => Err(EntryError::Truncated { need, have: rest.len() }),
                }
            }),
        };
        let header = match parsed {
            Ok(header) => header,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let len = header.entry_len();
        let payload_end = ENTRY_HEADER_BYTES + header.payload_len.get() as usize;
        let entry = StoredEntry {
            header,
            at: self.at,
            payload: &rest[ENTRY_HEADER_BYTES..payload_end],
            bytes: &rest[..len],
        };
        self.at += len;
        Some(Ok(entry))
    }
}

/// Parses the entry at the start of `buf` and verifies its checksum. Returns the header and the
/// payload (without padding). `buf` may extend past the entry.
pub fn parse_entry(buf: &[u8]) -> Result<(EntryHeader, &[u8]), EntryError> {
    let header = parse_header(buf)?;
    let payload_len = header.payload_len.get() as usize;
    let need = header.entry_len();
    if buf.len() < need {
        return Err(EntryError::Truncated { need, have: buf.len() });
    }
    let payload = &buf[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + payload_len];
    let computed = header.checksum_with(crc32fast::hash(payload), payload_len as u64);
    if computed != header.crc.get() {
        return Err(EntryError::ChecksumMismatch { stored: header.crc.get(), computed });
    }
    Ok((header, payload))
}

/// Whether `buf` starts with an intact entry that only a newer build can read: the frame every
/// version keeps verifies (magic, a payload length within bounds, the checksum) while its
/// version or payload format is unknown here. Recovery stops on such an entry instead of
/// cutting the log at it, which would drop every record from there on.
///
/// `Err(Truncated)` when `buf` ends before the entry's payload does.
pub fn written_by_newer_build(buf: &[u8]) -> Result<bool, EntryError> {
    let Ok((header, _)) = EntryHeader::read_from_prefix(buf) else {
        return Err(EntryError::Truncated { need: ENTRY_HEADER_BYTES, have: buf.len() });
    };
    // A later version, or a payload format this version does not know; anything else unread
    // (a version below the oldest, say) is damage.
    let newer =
        header.version > ENTRY_VERSION || (header.version_known() && header.format().is_none());
    let payload_len = header.payload_len.get();
    if !newer || header.magic.get() != ENTRY_MAGIC || payload_len > ENTRY_PAYLOAD_BYTES_MAX {
        return Ok(false);
    }
    let need = ENTRY_HEADER_BYTES + payload_len as usize;
    if buf.len() < need {
        return Err(EntryError::Truncated { need, have: buf.len() });
    }
    let payload = &buf[ENTRY_HEADER_BYTES..need];
    Ok(header.checksum_with(crc32fast::hash(payload), u64::from(payload_len)) == header.crc.get())
}

/// Parses and sanity-checks a header without reading the payload.
pub fn parse_header(buf: &[u8]) -> Result<EntryHeader, EntryError> {
    let Ok((header, _)) = EntryHeader::read_from_prefix(buf) else {
        return Err(EntryError::Truncated { need: ENTRY_HEADER_BYTES, have: buf.len() });
    };
    if header.magic.get() != ENTRY_MAGIC {
        if buf[..ENTRY_HEADER_BYTES].iter().all(|&b| b == 0) {
            return Err(EntryError::Zeroed);
        }
        return Err(EntryError::BadMagic { found: header.magic.get() });
    }
    if !header.version_known() {
        return Err(EntryError::BadVersion { found: header.version });
    }
    if header.format().is_none() {
        return Err(EntryError::BadFormat { found: header.format });
    }
    if header.payload_len.get() > ENTRY_PAYLOAD_BYTES_MAX {
        return Err(EntryError::PayloadTooLarge {
            len: header.payload_len.get(),
            max: ENTRY_PAYLOAD_BYTES_MAX,
        });
    }
    if header.record_count.get() == 0 {
        return Err(EntryError::EmptyBatch);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::BatchMeta;

    fn meta(count: u32) -> BatchMeta {
        BatchMeta::new(count, 1_700_000_000_000, 1_700_000_000_005)
    }

    fn encode(base_offset: u64, payload: &[u8]) -> Vec<u8> {
        encode_in_epoch(base_offset, 0, payload)
    }

    fn encode_in_epoch(base_offset: u64, leader_epoch: i32, payload: &[u8]) -> Vec<u8> {
        let header = EntryHeader::new(
            PayloadFormat::Native,
            Offset(base_offset),
            LeaderEpoch(leader_epoch),
            &meta(3),
            payload.len() as u32,
            crc32fast::hash(payload),
        );
        let mut buf = header.as_bytes().to_vec();
        buf.extend_from_slice(payload);
        buf.resize(entry_len(payload.len()), 0);
        buf
    }

    #[test]
    fn round_trips_and_pads_to_alignment() {
        let buf = encode(42, b"hello world");
        assert_eq!(buf.len() % ENTRY_ALIGN, 0);
        let (header, payload) = parse_entry(&buf).unwrap();
        assert_eq!(payload, b"hello world");
        assert_eq!(header.base_offset(), Offset(42));
        assert_eq!(header.next_offset(), Offset(45));
        assert_eq!(header.entry_len(), buf.len());
    }

    /// Version 2 carries the leader epoch; version 1 had zeros there, read as epoch 0, and a
    /// build reads both.
    #[test]
    fn the_leader_epoch_is_kept_and_version_1_entries_read_as_epoch_0() {
        let buf = encode_in_epoch(42, 7, b"epoch");
        let (header, _) = parse_entry(&buf).unwrap();
        assert_eq!((header.version, header.leader_epoch()), (2, LeaderEpoch(7)));

        let mut old = encode_in_epoch(42, 0, b"epoch");
        old[12] = 1;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&old[8..ENTRY_HEADER_BYTES]);
        hasher.update(b"epoch");
        old[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());
        let (header, payload) = parse_entry(&old).unwrap();
        assert_eq!(
            (header.version, header.leader_epoch(), payload),
            (1, LeaderEpoch(0), &b"epoch"[..])
        );
        assert_eq!(written_by_newer_build(&old), Ok(false));
    }

    #[test]
    fn combined_checksum_equals_checksum_of_concatenation() {
        let buf = encode(7, b"payload bytes");
        let (header, _) = parse_entry(&buf).unwrap();
        let mut whole = crc32fast::Hasher::new();
        whole.update(&buf[8..ENTRY_HEADER_BYTES]);
        whole.update(b"payload bytes");
        assert_eq!(header.crc.get(), whole.finalize());
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let buf = encode(1, b"abcdefgh");
        for byte in 0..ENTRY_HEADER_BYTES + 8 {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(parse_entry(&bad).is_err(), "flip at byte {byte} bit {bit} undetected");
            }
        }
    }

    #[test]
    fn zeros_truncation_and_huge_lengths_are_distinguished() {
        assert_eq!(parse_entry(&[0u8; 64]).unwrap_err(), EntryError::Zeroed);
        let buf = encode(1, b"abcdefgh");
        assert!(matches!(parse_entry(&buf[..70]), Err(EntryError::Truncated { .. })));
        assert!(matches!(parse_entry(&buf[..10]), Err(EntryError::Truncated { .. })));
        let mut huge = buf.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_entry(&huge), Err(EntryError::PayloadTooLarge { .. })));
    }

    #[test]
    fn entries_walks_a_buffer_and_stops_at_the_first_bad_entry() {
        let mut buf = encode(0, b"first");
        buf.extend(encode(3, &[7u8; 40]));
        buf.extend(encode(6, b"third"));
        let walked: Vec<_> = entries(&buf, Check::Checksum).map(Result::unwrap).collect();
        let bases: Vec<u64> = walked.iter().map(|e| e.header.base_offset().0).collect();
        assert_eq!(bases, [0, 3, 6]);
        assert_eq!(walked[1].payload, &[7u8; 40]);
        assert_eq!(walked[1].at, walked[0].bytes.len());
        assert_eq!(walked.iter().map(|e| e.bytes.len()).sum::<usize>(), buf.len());

        // A flipped payload byte: only a checksum walk sees it, and it ends the walk there.
        let mut flipped = buf.clone();
        flipped[walked[1].at + ENTRY_HEADER_BYTES] ^= 1;
        assert_eq!(entries(&flipped, Check::Header).filter(Result::is_ok).count(), 3);
        let checked: Vec<_> = entries(&flipped, Check::Checksum).collect();
        assert_eq!(checked.len(), 2);
        assert!(matches!(checked[1], Err(EntryError::ChecksumMismatch { .. })));

        // Cut short: the whole entries, then the cut one as an error, then nothing.
        let cut = &buf[..buf.len() - 4];
        let walked: Vec<_> = entries(cut, Check::Header).collect();
        assert_eq!(walked.len(), 3);
        assert!(matches!(walked[2], Err(EntryError::Truncated { .. })));
    }
}
