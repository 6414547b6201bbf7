//! Numbers that mean different things and must not be mixed up: a record's offset in its
//! partition's log, a byte position in a segment file, a leader epoch, a partition's index in its
//! topic, a shard's index, a broker's node id. Each is a newtype where it crosses a module
//! boundary, so that passing one for another does not compile (`observe(offset, position, …)`
//! once took two `u64`s side by side). The number inside stays public: wire formats and file
//! formats read and write it as it is, and it is what they display as.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

/// Declares a newtype over a number, ordered, hashable, archivable (metadata records carry
/// them) and displayed as the number.
macro_rules! number {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(Archive, Serialize, Deserialize)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

number! {
    /// A record's place in its partition's log: the first record ever appended is 0, and each
    /// record takes the next. An entry spans its records' offsets, from its base offset to the
    /// next entry's.
    Offset(u64)
}

number! {
    /// A byte position in a segment file: where an entry starts, or how far a file is covered.
    FilePosition(u64)
}

number! {
    /// A leader epoch (KIP-101): a partition's leadership term, raised by each new leader and
    /// stamped in every entry appended under it. Kafka's wire format carries it as an `i32`,
    /// with -1 for "unknown".
    LeaderEpoch(i32)
}

number! {
    /// A partition's index within its topic (Kafka's partition index, an `int32` on its wire):
    /// `0..partitions`.
    PartitionId(u32)
}

number! {
    /// A broker's id in its cluster (`node.id`, Kafka's broker id on the wire).
    NodeId(i32)
}

number! {
    /// A shard's index among the broker's shards: which one owns a partition, or a group.
    ShardId(usize)
}

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

impl FilePosition {
    /// The position `bytes` further on.
    pub fn plus(self, bytes: u64) -> Self {
        Self(self.0 + bytes)
    }
}
