//! The sparse index of one segment: where to start reading for an offset or a timestamp.
//!
//! One point every [`INDEX_INTERVAL_BYTES`] of log; each point holds an entry's base offset, its
//! byte position in the segment and the largest timestamp of everything *before* it. Because
//! that running maximum never decreases, one column serves both lookups: the offset lookup takes
//! the last point at or below the offset; the timestamp lookup takes the last point before which
//! every record is older than the target. Either way the reader scans forward from the point.
//!
//! On disk (`<base_offset>.index`), little-endian, written when a segment is sealed, at a clean
//! stop and at each recovery point of the active segment (then covering only what an fdatasync
//! covered, with the points inside it); a missing, stale or corrupt file is rebuilt by scanning
//! the segment:
//!
//! ```text
//! header (48 bytes): magic "SPI1" | crc u32 (of the rest of the file) | count u32 | reserved u32
//!                    covered_bytes u64 | next_offset u64 | max_timestamp i64 | reserved u64
//! count points (24 bytes each): offset u64 | position u64 | max_timestamp_before i64
//! ```

use zerocopy::little_endian::{I64, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::types::{FilePosition, Offset};

/// Log bytes between index points: a lookup scans at most this much plus one entry.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;
const INDEX_MAGIC: u32 = u32::from_le_bytes(*b"SPI1");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexPoint {
    pub offset: Offset,
    pub position: FilePosition,
    pub max_timestamp_before: i64,
}

/// The in-memory index and the segment facts it was built with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    points: Vec<IndexPoint>,
}

impl SegmentIndex {
    /// Records the entry at `position` if it is the first or far enough past the last point.
    pub fn observe(&mut self, offset: Offset, position: FilePosition, max_timestamp_before: i64) {
        let due = match self.points.last() {
            None => true,
            Some(last) => position >= last.position.plus(INDEX_INTERVAL_BYTES),
        };
        if due {
            let last = self.points.last().map(|l| (l.offset, l.position));
            assert!(
                last.is_none_or(|(o, p)| o < offset && p < position),
                "index point {offset} at byte {position} does not follow {last:?}"
            );
            self.points.push(IndexPoint { offset, position, max_timestamp_before });
        }
    }

    /// Where to start scanning for `offset`: the last point at or below it, else the start.
    pub fn seek_offset(&self, offset: Offset) -> Option<IndexPoint> {
        let after = self.points.partition_point(|p| p.offset <= offset);
        after.checked_sub(1).map(|i| self.points[i])
    }

    /// The last point at or before file position `position`, else the start.
    pub fn seek_position(&self, position: FilePosition) -> Option<IndexPoint> {
        let after = self.points.partition_point(|p| p.position <= position);
        after.checked_sub(1).map(|i| self.points[i])
    }

    /// The first point at or past file position `position`.
    pub fn first_at_or_after(&self, position: FilePosition) -> Option<IndexPoint> {
        let at = self.points.partition_point(|p| p.position < position);
        self.points.get(at).copied()
    }

    /// Where to start scanning for the first record at or after `timestamp`: the last point
    /// before which every record is older.
    pub fn seek_timestamp(&self, timestamp: i64) -> Option<IndexPoint> {
        let after = self.points.partition_point(|p| p.max_timestamp_before < timestamp);
        after.checked_sub(1).map(|i| self.points[i])
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// What an index file says about its segment, besides the points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexedSegment {
    /// Segment bytes the index describes; a segment longer than this has entries past it.
    pub covered_bytes: u64,
    pub next_offset: Offset,
    pub max_timestamp: i64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct FileHeader {
    magic: U32,
    crc: U32,
    count: U32,
    reserved: U32,
    covered_bytes: U64,
    next_offset: U64,
    max_timestamp: I64,
    /// The segment the index was written for: a file copied or renamed onto another segment
    /// is refused even though it is otherwise whole.
    base_offset: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct FilePoint {
    offset: U64,
    position: U64,
    max_timestamp_before: I64,
}

const HEADER_BYTES: usize = std::mem::size_of::<FileHeader>();
const POINT_BYTES: usize = std::mem::size_of::<FilePoint>();
const _: () = assert!(HEADER_BYTES == 48 && POINT_BYTES == 24);

/// The largest index file a segment of `segment_len` bytes can have: a point per
/// [`INDEX_INTERVAL_BYTES`] of log at most. A larger file is not one of ours; it is not read.
pub fn file_bytes_max(segment_len: u64) -> u64 {
    let points = segment_len / INDEX_INTERVAL_BYTES + 1;
    HEADER_BYTES as u64 + points * POINT_BYTES as u64
}

/// Serializes an index file.
pub fn encode(index: &SegmentIndex, base_offset: u64, segment: IndexedSegment) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_BYTES + index.points.len() * POINT_BYTES);
    let header = FileHeader {
        magic: INDEX_MAGIC.into(),
        crc: 0.into(),
        count: (covered_points(index, segment.covered_bytes).count() as u32).into(),
        reserved: 0.into(),
        covered_bytes: segment.covered_bytes.into(),
        next_offset: segment.next_offset.0.into(),
        max_timestamp: segment.max_timestamp.into(),
        base_offset: base_offset.into(),
    };
    buf.extend_from_slice(header.as_bytes());
    // An index written as a recovery point covers less than the segment holds in memory: only
    // the points inside what it covers go out (and are counted in the header above).
    for p in covered_points(index, segment.covered_bytes) {
        let point = FilePoint {
            offset: p.offset.0.into(),
            position: p.position.0.into(),
            max_timestamp_before: p.max_timestamp_before.into(),
        };
        buf.extend_from_slice(point.as_bytes());
    }
    let crc = crc32fast::hash(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn covered_points(index: &SegmentIndex, covered_bytes: u64) -> impl Iterator<Item = &IndexPoint> {
    index.points.iter().take_while(move |p| p.position < FilePosition(covered_bytes))
}

/// Parses an index file, refusing anything inconsistent: the caller rebuilds instead.
pub fn decode(
    buf: &[u8],
    base_offset: u64,
) -> Result<(SegmentIndex, IndexedSegment), &'static str> {
    let (header, rest) = FileHeader::ref_from_prefix(buf).map_err(|_| "shorter than a header")?;
    if header.magic.get() != INDEX_MAGIC {
        return Err("bad magic");
    }
    if crc32fast::hash(&buf[8..]) != header.crc.get() {
        return Err("checksum mismatch");
    }
    if header.base_offset.get() != base_offset {
        return Err("written for another segment");
    }
    let count = header.count.get() as usize;
    if rest.len() != count * POINT_BYTES {
        return Err("length disagrees with the point count");
    }
    let segment = IndexedSegment {
        covered_bytes: header.covered_bytes.get(),
        next_offset: Offset(header.next_offset.get()),
        max_timestamp: header.max_timestamp.get(),
    };
    let mut index = SegmentIndex::default();
    for chunk in rest.chunks_exact(POINT_BYTES) {
        let (p, _) = FilePoint::ref_from_prefix(chunk).map_err(|_| "short point")?;
        let point = IndexPoint {
            offset: Offset(p.offset.get()),
            position: FilePosition(p.position.get()),
            max_timestamp_before: p.max_timestamp_before.get(),
        };
        let in_order = index
            .points
            .last()
            .is_none_or(|l| l.offset < point.offset && l.position < point.position);
        let in_segment = point.offset >= Offset(base_offset)
            && point.offset < segment.next_offset
            && point.position < FilePosition(segment.covered_bytes);
        if !in_order || !in_segment {
            return Err("points out of order or outside the segment");
        }
        index.points.push(point);
    }
    Ok((index, segment))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        let mut index = SegmentIndex::default();
        // Entries of 1000 bytes, 10 records each, timestamps rising by 5 per entry.
        let mut max_before = i64::MIN;
        for i in 0..100u64 {
            index.observe(Offset(100 + i * 10), FilePosition(i * 1000), max_before);
            max_before = max_before.max(1000 + i as i64 * 5);
        }
        index
    }

    #[test]
    fn points_are_sparse() {
        let index = sample();
        // 100 entries of 1000 bytes: a point every 5 entries (5000 >= 4096).
        assert_eq!(index.len(), 20);
    }

    #[test]
    fn offset_lookup_takes_the_last_point_at_or_below() {
        let index = sample();
        assert_eq!(index.seek_offset(Offset(99)), None);
        assert_eq!(index.seek_offset(Offset(100)).unwrap().position, FilePosition(0));
        assert_eq!(index.seek_offset(Offset(149)).unwrap().offset, Offset(100));
        assert_eq!(index.seek_offset(Offset(150)).unwrap().offset, Offset(150));
        assert_eq!(index.seek_offset(Offset(10_000)).unwrap().offset, Offset(1050));
    }

    #[test]
    fn timestamp_lookup_never_skips_a_match() {
        let index = sample();
        for target in [900, 1000, 1003, 1024, 1025, 1026, 1400, 2000] {
            let point = index.seek_timestamp(target).unwrap();
            assert!(point.max_timestamp_before < target);
            // The first entry with timestamp >= target is at or after the point.
            let first_match = (0..100u64).find(|i| 1000 + *i as i64 * 5 >= target);
            if let Some(i) = first_match {
                assert!(point.offset <= Offset(100 + i * 10), "target {target}");
            }
        }
    }

    /// The bound on what is read never refuses an index this build wrote: the densest index
    /// (a point every `INDEX_INTERVAL_BYTES`) of a segment fits it exactly.
    #[test]
    fn the_largest_index_of_a_segment_fits_its_bound() {
        let segment_len = 64 * INDEX_INTERVAL_BYTES + 100;
        let mut index = SegmentIndex::default();
        let mut position = 0;
        while position < segment_len {
            index.observe(Offset(position), FilePosition(position), 0);
            position += INDEX_INTERVAL_BYTES;
        }
        let facts = IndexedSegment {
            covered_bytes: segment_len,
            next_offset: Offset(segment_len),
            max_timestamp: 0,
        };
        let bytes = encode(&index, 0, facts);
        assert_eq!(bytes.len() as u64, file_bytes_max(segment_len));
    }

    #[test]
    fn files_round_trip_and_damage_is_refused() {
        let index = sample();
        let segment = IndexedSegment {
            covered_bytes: 100_000,
            next_offset: Offset(1100),
            max_timestamp: 1495,
        };
        let bytes = encode(&index, 100, segment);
        assert_eq!(decode(&bytes, 100).unwrap(), (index.clone(), segment));
        for at in [0, 5, 9, 20, 60, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad, 100).is_err(), "damage at {at}");
        }
        assert!(decode(&bytes[..bytes.len() - 3], 100).is_err());
        assert!(decode(&[], 100).is_err());
        // Another segment's index is refused even with a good checksum and points that would
        // fit: a later segment's offsets are all above this one's base.
        assert_eq!(decode(&bytes, 50), Err("written for another segment"));
        let relabelled = encode(&index, 200, segment);
        assert_eq!(decode(&relabelled, 200), Err("points out of order or outside the segment"));
    }
}
