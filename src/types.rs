//! Numbers that mean different things and must not be mixed up: a record's offset in its
//! partition's log, a byte position in a segment file, a leader epoch, a partition's index in its
//! topic, a shard's index, a broker's node id. Each is a
//! newtype where it crosses a module boundary, so that passing one for another does not compile
//! (`observe(offset, position, …)` once took two `u64`s side by side). The number inside stays
//! public: wire formats and file formats read and write it as it is.

use std::fmt;

/// A record's place in its partition's log: the first record ever appended is 0, and each
/// record takes the next. An entry spans its records' offsets, from its base offset to the next
/// entry's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset `records` records later.
    pub fn plus(self, records: u64) -> Self {
        Self(self.0 + records)
    }

    /// The records from `earlier` up to this offset (none when `earlier` is not earlier).
    pub fn records_since(self, earlier: Offset) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A byte position in a segment file: where an entry starts, or how far a file is covered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilePosition(pub u64);

impl FilePosition {
    /// The position `bytes` further on.
    pub fn plus(self, bytes: u64) -> Self {
        Self(self.0 + bytes)
    }

    /// The bytes from `earlier` up to this position (none when `earlier` is not earlier).
    pub fn bytes_since(self, earlier: FilePosition) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A leader epoch (KIP-101): a partition's leadership term, raised by each new leader and
/// stamped in every entry appended under it. Kafka's wire format carries it as an `i32`, with
/// -1 for "unknown".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaderEpoch(pub i32);

/// A partition's index within its topic (Kafka's partition index, an `int32` on its wire):
/// `0..partitions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u32);

/// A broker's id in its cluster (`node.id`, Kafka's broker id on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub i32);

/// A shard's index among the broker's shards: which one owns a partition, or a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub usize);

macro_rules! display_as_number {
    ($($name:ident),*) => {
        $(impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        })*
    };
}

display_as_number!(Offset, FilePosition, LeaderEpoch, PartitionId, NodeId, ShardId);
