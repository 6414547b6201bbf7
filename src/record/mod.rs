//! Records and the log entry that carries them.
//!
//! A producer's batch becomes one *entry* in a partition's log: a fixed 64-byte header
//! ([`entry::EntryHeader`]) followed by a payload in one of the [`PayloadFormat`]s. This module owns
//! both formats and their checksums: the native batch (`batch`), Kafka's RecordBatch v2 as a
//! producer sends it (`kafka_batch`), the conversion between them for readers of the other
//! protocol (`convert`), Kafka's compression codecs (`codecs`), and what a topic's settings make
//! of a produced batch (`conform`: timestamps checked, recompressed, LogAppendTime); `archive` writes and validates the rkyv archives both the native
//! protocol and the cluster's metadata log carry. It knows nothing of files or sockets.

pub mod archive;
pub mod batch;
pub mod codecs;
pub mod conform;
pub mod convert;
pub mod entry;
pub mod kafka_batch;
pub mod pending;

pub use batch::{BatchBuilder, BatchMeta, OwnedRecord, RecordView};
pub use entry::{EntryError, EntryHeader, PayloadFormat, ENTRY_ALIGN, ENTRY_HEADER_BYTES};
pub use pending::PendingEntry;
