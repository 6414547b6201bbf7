//! The `__consumer_offsets` log: where committed offsets are kept.
//!
//! An internal topic on the same storage engine as every other, with one record per commit:
//! key `group \0 topic \0 partition`; the value's layout is named by the record header `v`
//! (one byte), absent on records written before it existed:
//!
//! ```text
//! v0 (no header): offset i64 BE | commit time ms i64 BE | metadata
//! v1:             offset i64 BE | commit time ms i64 BE | leader epoch i32 BE | metadata
//! ```
//!
//! A deleted group's offsets get tombstones (no value). The latest record for a key wins when
//! the log is replayed. A version this build does not know is an error that stops the broker
//! (naming the partition and offset), never a record skipped: skipping would forget a commit.

use crate::record::OwnedRecord;
use crate::types::PartitionId;

/// The internal topic's name, as Kafka names it.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Its partition count: fixed, because a group's partition (and so its coordinator shard)
/// must not move between runs.
pub const OFFSETS_PARTITIONS: u32 = 16;

/// The `__consumer_offsets` partition that holds a group.
pub fn partition_for(group: &str) -> PartitionId {
    // FNV-1a: stable across builds, like the partition-to-shard map.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in group.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    PartitionId(hash % OFFSETS_PARTITIONS)
}

/// The record header that names the value's layout.
const VERSION_HEADER: &[u8] = b"v";
/// The layout this build writes; it reads every one up to it.
const VALUE_VERSION: u8 = 1;

/// A committed offset and what came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    /// The leader epoch of the record before `offset`, as the consumer saw it (KIP-320), or
    /// -1 when the client sent none: consumers validate their position with it after a leader
    /// change.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_time_ms: i64,
}

/// One record of the log, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetRecord {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// `None` is a tombstone.
    pub committed: Option<Committed>,
}

/// Why a record of the log could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not an offset record: a key or value of the wrong shape.
    Malformed,
    /// Written by a newer build, in a layout this one does not know.
    UnknownVersion(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed => write!(f, "not an offset record"),
            Self::UnknownVersion(v) => write!(
                f,
                "offset record version {v} is newer than this build reads (up to \
                 {VALUE_VERSION}); run the newer build"
            ),
        }
    }
}

impl OffsetRecord {
    pub fn encode(&self, timestamp: i64) -> OwnedRecord {
        let key = format!("{}\0{}\0{}", self.group, self.topic, self.partition).into_bytes();
        let value = self.committed.as_ref().map(|c| {
            let mut value = Vec::with_capacity(20 + c.metadata.len());
            value.extend_from_slice(&c.offset.to_be_bytes());
            value.extend_from_slice(&c.commit_time_ms.to_be_bytes());
            value.extend_from_slice(&c.leader_epoch.to_be_bytes());
            value.extend_from_slice(c.metadata.as_bytes());
            value
        });
        let headers = vec![(VERSION_HEADER.to_vec(), vec![VALUE_VERSION])];
        OwnedRecord { key: Some(key), value, headers, timestamp }
    }

    /// Reads one record of the log, in any layout up to [`VALUE_VERSION`].
    pub fn decode<'a>(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        mut headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Self, DecodeError> {
        let version = match headers.find(|(name, _)| *name == VERSION_HEADER) {
            None => 0,
            Some((_, [version])) => *version,
            Some(_) => return Err(DecodeError::Malformed),
        };
        if version > VALUE_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let key = std::str::from_utf8(key.ok_or(DecodeError::Malformed)?)
            .map_err(|_| DecodeError::Malformed)?;
        let mut parts = key.split('\0');
        let (Some(group), Some(topic), Some(partition), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DecodeError::Malformed);
        };
        let partition = partition.parse().map_err(|_| DecodeError::Malformed)?;
        let committed = value.map(|value| decode_value(version, value)).transpose()?;
        Ok(Self { group: group.into(), topic: topic.into(), partition, committed })
    }
}

fn decode_value(version: u8, value: &[u8]) -> Result<Committed, DecodeError> {
    let fixed = if version == 0 { 16 } else { 20 };
    if value.len() < fixed {
        return Err(DecodeError::Malformed);
    }
    let i64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&value[at..at + 8]);
        i64::from_be_bytes(bytes)
    };
    let leader_epoch = if version == 0 {
        -1
    } else {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&value[16..20]);
        i32::from_be_bytes(bytes)
    };
    Ok(Committed {
        offset: i64_at(0),
        commit_time_ms: i64_at(8),
        leader_epoch,
        metadata: String::from_utf8_lossy(&value[fixed..]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(owned: &OwnedRecord) -> Result<OffsetRecord, DecodeError> {
        let headers = owned.headers.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
        OffsetRecord::decode(owned.key.as_deref(), owned.value.as_deref(), headers)
    }

    #[test]
    fn records_round_trip_and_tombstones_have_no_value() {
        let record = OffsetRecord {
            group: "g".into(),
            topic: "orders".into(),
            partition: 3,
            committed: Some(Committed {
                offset: 42,
                leader_epoch: 2,
                metadata: "m".into(),
                commit_time_ms: 7,
            }),
        };
        let owned = record.encode(1);
        assert_eq!(decode(&owned), Ok(record.clone()));
        let tombstone = OffsetRecord { committed: None, ..record };
        let owned = tombstone.encode(1);
        assert_eq!(owned.value, None);
        assert_eq!(decode(&owned), Ok(tombstone));
        let nonsense = OwnedRecord { key: Some(b"nonsense".to_vec()), ..owned };
        assert_eq!(decode(&nonsense), Err(DecodeError::Malformed));
    }

    /// Records written before the version header (and the leader epoch) are still read.
    #[test]
    fn version_0_records_read_with_no_leader_epoch() {
        let mut value = Vec::new();
        value.extend_from_slice(&42i64.to_be_bytes());
        value.extend_from_slice(&7i64.to_be_bytes());
        value.extend_from_slice(b"meta");
        let old = OwnedRecord {
            key: Some(b"g\0orders\x003".to_vec()),
            value: Some(value),
            headers: Vec::new(),
            timestamp: 1,
        };
        let committed = decode(&old).unwrap().committed.unwrap();
        assert_eq!(
            committed,
            Committed { offset: 42, leader_epoch: -1, metadata: "meta".into(), commit_time_ms: 7 }
        );
    }

    /// A newer build's layout stops the replay instead of being skipped (which would forget
    /// commits).
    #[test]
    fn an_unknown_version_is_an_error_not_a_skip() {
        let record =
            OffsetRecord { group: "g".into(), topic: "t".into(), partition: 0, committed: None };
        let mut owned = record.encode(1);
        owned.headers = vec![(VERSION_HEADER.to_vec(), vec![VALUE_VERSION + 1])];
        assert_eq!(decode(&owned), Err(DecodeError::UnknownVersion(VALUE_VERSION + 1)));
    }

    #[test]
    fn groups_spread_over_the_partitions_stably() {
        assert_eq!(partition_for("a"), partition_for("a"));
        let used: std::collections::HashSet<u32> =
            (0..200).map(|i| partition_for(&format!("group-{i}")).0).collect();
        assert!(used.len() > OFFSETS_PARTITIONS as usize / 2);
    }
}
