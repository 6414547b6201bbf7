//! Walking a segment's bytes entry by entry: recovery and index rebuilds.
//!
//! [`scan`] is pure: it is handed bytes that start at a known file position and consumes whole,
//! valid entries, checking each one's checksum and that its base offset continues the log. The
//! driver in `segment.rs` feeds it chunks read from disk.

use crate::log::index::SegmentIndex;
use crate::record::entry::{
    parse_entry, parse_header, written_by_newer_build, EntryError, ENTRY_HEADER_BYTES,
};
use crate::types::{FilePosition, Offset};

/// What a scan has established so far about a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanState {
    /// File position just past the last valid entry: the bytes of whole entries.
    pub position: u64,
    /// The offset the next entry must start at.
    pub next_offset: Offset,
    pub max_timestamp: i64,
    pub index: SegmentIndex,
}

impl ScanState {
    pub fn new(base_offset: Offset) -> Self {
        Self {
            position: 0,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            index: SegmentIndex::default(),
        }
    }
}

/// Why a scan of a buffer stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// The buffer ends inside an entry that needs `entry_bytes` in all; read more and go on.
    NeedMore { entry_bytes: usize },
    /// Zeros where the next header would be: the written part of the segment ends here.
    End,
    /// The bytes at `state.position` are not a valid next entry.
    Corrupt(EntryError),
    /// An intact entry at `state.position` that a newer build wrote (its version or payload
    /// format is unknown here): not damage, so the log must not be cut there.
    WrittenByNewerBuild(EntryError),
}

/// Consumes the valid entries at the start of `buf`, which begins at `state.position`.
pub fn scan(buf: &[u8], state: &mut ScanState) -> ScanStop {
    let mut at = 0usize;
    loop {
        let rest = &buf[at..];
        if rest.is_empty() {
            return ScanStop::NeedMore { entry_bytes: ENTRY_HEADER_BYTES };
        }
        let header = match parse_header(rest) {
            Ok(header) => header,
            Err(EntryError::Truncated { .. }) => {
                return ScanStop::NeedMore { entry_bytes: ENTRY_HEADER_BYTES }
            }
            Err(EntryError::Zeroed) => return ScanStop::End,
            Err(unknown @ (EntryError::BadVersion { .. } | EntryError::BadFormat { .. })) => {
                return match written_by_newer_build(rest) {
                    Ok(true) => ScanStop::WrittenByNewerBuild(unknown),
                    Ok(false) => ScanStop::Corrupt(unknown),
                    Err(EntryError::Truncated { need, .. }) => {
                        ScanStop::NeedMore { entry_bytes: need }
                    }
                    Err(other) => ScanStop::Corrupt(other),
                };
            }
            Err(other) => return ScanStop::Corrupt(other),
        };
        let entry_bytes = header.entry_len();
        if rest.len() < entry_bytes {
            return ScanStop::NeedMore { entry_bytes };
        }
        if let Err(e) = parse_entry(rest) {
            return ScanStop::Corrupt(e);
        }
        if header.base_offset() != state.next_offset {
            return ScanStop::Corrupt(EntryError::UnexpectedOffset {
                expected: state.next_offset,
                found: header.base_offset(),
            });
        }
        let position = FilePosition(state.position);
        state.index.observe(header.base_offset(), position, state.max_timestamp);
        state.max_timestamp = state.max_timestamp.max(header.max_timestamp.get());
        state.next_offset = header.next_offset();
        state.position += entry_bytes as u64;
        at += entry_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::entry::ENTRY_VERSION;
    use crate::record::{BatchMeta, EntryHeader, PayloadFormat};
    use zerocopy::{FromBytes, IntoBytes};

    fn entry(base_offset: u64, count: u32, payload: &[u8]) -> Vec<u8> {
        let meta = BatchMeta::new(count, 10, 10 + base_offset as i64);
        let header = EntryHeader::new(
            PayloadFormat::Native,
            Offset(base_offset),
            crate::types::LeaderEpoch(0),
            &meta,
            payload.len() as u32,
            crc32fast::hash(payload),
        );
        let mut buf = header.as_bytes().to_vec();
        buf.extend_from_slice(payload);
        buf.resize(crate::record::entry::entry_len(payload.len()), 0);
        buf
    }

    fn log_of(entries: usize) -> Vec<u8> {
        let mut log = Vec::new();
        for i in 0..entries {
            log.extend(entry(i as u64 * 3, 3, &vec![i as u8; 100 + i]));
        }
        log
    }

    #[test]
    fn scans_to_the_zeroed_end() {
        let mut log = log_of(50);
        let written = log.len() as u64;
        log.resize(log.len() + 8192, 0);
        let mut state = ScanState::new(Offset(0));
        assert_eq!(scan(&log, &mut state), ScanStop::End);
        assert_eq!(state.position, written);
        assert_eq!(state.next_offset, Offset(150));
        assert_eq!(state.max_timestamp, 10 + 147);
        assert!(!state.index.is_empty());
    }

    #[test]
    fn a_torn_tail_stops_the_scan_at_the_last_whole_entry() {
        let log = log_of(10);
        let last_start = log.len() - crate::record::entry::entry_len(109);
        let torn = &log[..log.len() - 30];
        let mut state = ScanState::new(Offset(0));
        assert!(matches!(scan(torn, &mut state), ScanStop::NeedMore { .. }));
        assert_eq!(state.position, last_start as u64);
        assert_eq!(state.next_offset, Offset(27));
    }

    #[test]
    fn a_flipped_byte_is_corruption_at_that_entry() {
        let mut log = log_of(10);
        let fifth = (0..4).map(|i| crate::record::entry::entry_len(100 + i)).sum::<usize>();
        log[fifth + ENTRY_HEADER_BYTES + 3] ^= 1;
        let mut state = ScanState::new(Offset(0));
        assert!(matches!(
            scan(&log, &mut state),
            ScanStop::Corrupt(EntryError::ChecksumMismatch { .. })
        ));
        assert_eq!(state.position, fifth as u64);
        assert_eq!(state.next_offset, Offset(12));
    }

    #[test]
    fn an_offset_that_does_not_continue_the_log_is_corruption() {
        let mut log = entry(0, 3, b"abc");
        log.extend(entry(5, 1, b"def"));
        let mut state = ScanState::new(Offset(0));
        assert_eq!(
            scan(&log, &mut state),
            ScanStop::Corrupt(EntryError::UnexpectedOffset {
                expected: Offset(3),
                found: Offset(5)
            })
        );
    }

    /// An entry as a newer build might write it: the same frame, an unknown version.
    fn newer_entry(base_offset: u64, version: u8) -> Vec<u8> {
        let mut bytes = entry(base_offset, 1, b"from the future");
        bytes[12] = version;
        let payload_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let header = EntryHeader::read_from_prefix(&bytes).unwrap().0;
        let payload = &bytes[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + payload_len];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header.as_bytes()[8..]);
        hasher.update(payload);
        bytes[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());
        bytes
    }

    #[test]
    fn an_intact_entry_of_a_newer_version_stops_the_scan_without_a_cut() {
        let mut log = log_of(3);
        let before = log.len() as u64;
        log.extend(newer_entry(9, ENTRY_VERSION + 1));
        log.extend(entry(10, 1, b"after"));
        let mut state = ScanState::new(Offset(0));
        assert_eq!(
            scan(&log, &mut state),
            ScanStop::WrittenByNewerBuild(EntryError::BadVersion { found: ENTRY_VERSION + 1 })
        );
        assert_eq!((state.position, state.next_offset), (before, Offset(9)));

        // Half of it present: read more before deciding.
        let mut state = ScanState::new(Offset(0));
        let short = &log[..before as usize + ENTRY_HEADER_BYTES + 4];
        assert!(matches!(scan(short, &mut state), ScanStop::NeedMore { .. }));

        // The same bytes with a flipped payload bit are damage, cut as before.
        let mut damaged = log.clone();
        damaged[before as usize + ENTRY_HEADER_BYTES + 1] ^= 1;
        let mut state = ScanState::new(Offset(0));
        assert_eq!(
            scan(&damaged, &mut state),
            ScanStop::Corrupt(EntryError::BadVersion { found: ENTRY_VERSION + 1 })
        );
    }

    #[test]
    fn chunked_scanning_matches_a_single_pass() {
        let log = log_of(40);
        let mut whole = ScanState::new(Offset(0));
        scan(&log, &mut whole);
        let mut state = ScanState::new(Offset(0));
        for chunk_bytes in [97usize, 700, 4096] {
            state = ScanState::new(Offset(0));
            while (state.position as usize) < log.len() {
                let start = state.position as usize;
                let end = (start + chunk_bytes).min(log.len());
                match scan(&log[start..end], &mut state) {
                    ScanStop::NeedMore { entry_bytes } if end < log.len() => {
                        let end = (start + entry_bytes.max(chunk_bytes)).min(log.len());
                        scan(&log[start..end], &mut state);
                    }
                    _ => {}
                }
            }
            assert_eq!(state, whole, "chunk {chunk_bytes}");
        }
        assert_eq!(state.next_offset, Offset(120));
    }
}
