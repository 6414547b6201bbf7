//! The `__consumer_offsets` log: where committed offsets are kept.
//!
//! An internal topic on the same storage engine as every other, with one record per commit:
//! key `group \0 topic \0 partition`, value `offset (i64 BE) | commit time ms (i64 BE) |
//! metadata`. A deleted group's offsets get tombstones (no value). The latest record for a key
//! wins when the log is replayed.

use crate::record::OwnedRecord;

/// The internal topic's name, as Kafka names it.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Its partition count: fixed, because a group's partition (and so its coordinator shard)
/// must not move between runs.
pub const OFFSETS_PARTITIONS: u32 = 16;

/// The `__consumer_offsets` partition that holds a group.
pub fn partition_for(group: &str) -> u32 {
    // FNV-1a: stable across builds, like the partition-to-shard map.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in group.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % OFFSETS_PARTITIONS
}

/// A committed offset and what came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
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

impl OffsetRecord {
    pub fn encode(&self, timestamp: i64) -> OwnedRecord {
        let key = format!("{}\0{}\0{}", self.group, self.topic, self.partition).into_bytes();
        let value = self.committed.as_ref().map(|c| {
            let mut value = Vec::with_capacity(16 + c.metadata.len());
            value.extend_from_slice(&c.offset.to_be_bytes());
            value.extend_from_slice(&c.commit_time_ms.to_be_bytes());
            value.extend_from_slice(c.metadata.as_bytes());
            value
        });
        OwnedRecord { key: Some(key), value, headers: Vec::new(), timestamp }
    }

    /// `None` for a record that is not a well-formed offset record (the log's own bytes are
    /// checksummed, so this means a format this build does not know).
    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Option<Self> {
        let key = std::str::from_utf8(key?).ok()?;
        let mut parts = key.split('\0');
        let (group, topic, partition) = (parts.next()?, parts.next()?, parts.next()?);
        let partition = partition.parse().ok()?;
        let committed = match value {
            None => None,
            Some(value) if value.len() >= 16 => Some(Committed {
                offset: i64::from_be_bytes(value[..8].try_into().ok()?),
                commit_time_ms: i64::from_be_bytes(value[8..16].try_into().ok()?),
                metadata: String::from_utf8_lossy(&value[16..]).into_owned(),
            }),
            Some(_) => return None,
        };
        Some(Self { group: group.into(), topic: topic.into(), partition, committed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_tombstones_have_no_value() {
        let record = OffsetRecord {
            group: "g".into(),
            topic: "orders".into(),
            partition: 3,
            committed: Some(Committed { offset: 42, metadata: "m".into(), commit_time_ms: 7 }),
        };
        let owned = record.encode(1);
        let back = OffsetRecord::decode(owned.key.as_deref(), owned.value.as_deref());
        assert_eq!(back, Some(record.clone()));
        let tombstone = OffsetRecord { committed: None, ..record };
        let owned = tombstone.encode(1);
        assert_eq!(owned.value, None);
        assert_eq!(OffsetRecord::decode(owned.key.as_deref(), None), Some(tombstone));
        assert_eq!(OffsetRecord::decode(Some(b"nonsense"), None), None);
    }

    #[test]
    fn groups_spread_over_the_partitions_stably() {
        assert_eq!(partition_for("a"), partition_for("a"));
        let used: std::collections::HashSet<u32> =
            (0..200).map(|i| partition_for(&format!("group-{i}"))).collect();
        assert!(used.len() > OFFSETS_PARTITIONS as usize / 2);
    }
}
