//! Native frames: a 32-byte little-endian header, an rkyv meta body, then raw data.
//!
//! ```text
//!  offset size field
//!       0    4 magic        "SPN1"
//!       4    1 version      protocol version (1)
//!       5    1 api          Api code of the request; a response carries its request's code
//!       6    2 flags        bit 0: response; bit 1: the meta is an ErrorBody
//!       8    8 request_id   chosen by the client, echoed in the response (pipelining)
//!      16    4 meta_len     bytes of the rkyv meta archive (exact: rkyv's root is at its end)
//!      20    4 data_len     bytes of data after the meta (a produce payload, fetched entries)
//!      24    4 data_crc     CRC-32 (IEEE) of the data; 0 when there is none
//!      28    4 header_crc   CRC-32 of bytes 0..28
//!      32    . meta (meta_len bytes), zeros to the next multiple of 16, then data (data_len bytes)
//! ```
//!
//! The meta is padded so the data starts 16-aligned in a 16-aligned body buffer, where rkyv
//! archives and stored entries can be read in place. The header checksum
//! means a corrupt length is caught before it sizes an allocation; the data checksum protects
//! payloads end to end.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const FRAME_HEADER_BYTES: usize = 32;
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"SPN1");
/// The native protocol's version: a frame of another is refused by number. 2: the cluster
/// learnt by clients (metadata with brokers, leaders and replicas; a replication factor in
/// CreateTopic; the not-leader, not-coordinator and replica-assignment codes). 3: metadata
/// snapshots (a Raft message or a metadata fetch may carry one; the cluster status names the
/// newest and where a voter's log starts), and FindCoordinator. 4: ReplicaFetch, and the codes
/// of `acks=all` with replicas (not enough replicas, before and after the append; timed out).
/// 5: Reassign (KIP-455), and partition metadata with the reassignment in progress and the
/// eligible leader replicas (KIP-966). 6: AlterTopicConfig (Kafka's IncrementalAlterConfigs of
/// a topic), DeleteOffsets (Kafka's OffsetDelete), LogDirs (DescribeLogDirs), Producers
/// (DescribeProducers) and DeleteRecords. 7: the invalid-timestamp code (KIP-937's limits).
/// 8: BrokerConfig (dynamic broker settings, Kafka's IncrementalAlterConfigs of a broker).
pub const PROTOCOL_VERSION: u8 = 8;
/// Meta bodies are small (names, numbers); anything larger is a corrupt or hostile frame.
pub const META_BYTES_MAX: u32 = 1024 * 1024;
pub const META_ALIGN: usize = 16;

pub const FLAG_RESPONSE: u16 = 1;
pub const FLAG_ERROR: u16 = 2;

const _: () = assert!(std::mem::size_of::<FrameHeader>() == FRAME_HEADER_BYTES);

/// The request kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Api {
    Produce = 1,
    Fetch = 2,
    ListOffsets = 3,
    Metadata = 4,
    CreateTopic = 5,
    DeleteTopic = 6,
    ListGroups = 7,
    DescribeGroup = 8,
    JoinGroup = 9,
    SyncGroup = 10,
    Heartbeat = 11,
    LeaveGroup = 12,
    CommitOffsets = 13,
    FetchOffsets = 14,
    DeleteGroup = 15,
    /// Raft messages from one controller voter to another; the messages travel as the data.
    VoterMessages = 16,
    /// A broker's registration, heartbeat or controlled shutdown, to the active controller.
    ControllerRequest = 17,
    /// The cluster as the answering voter sees it.
    ClusterStatus = 18,
    /// Committed metadata log entries from an index on, for a broker that is not a voter; the
    /// entries travel as the data.
    MetadataFetch = 19,
    /// Which broker coordinates a group (Kafka's FindCoordinator).
    FindCoordinator = 20,
    /// A follower's fetch of many partitions from their leader; the entries travel as the
    /// data, as stored.
    ReplicaFetch = 21,
    /// Partitions moved to other replicas, or a move cancelled (Kafka's
    /// AlterPartitionReassignments).
    Reassign = 22,
    /// A topic's settings changed (Kafka's IncrementalAlterConfigs).
    AlterTopicConfig = 23,
    /// A group's committed offsets of some partitions removed (Kafka's OffsetDelete).
    DeleteOffsets = 24,
    /// The broker's data directory: its replicas' sizes and the disk's room (Kafka's
    /// DescribeLogDirs).
    LogDirs = 25,
    /// The idempotent producers a partition's leader remembers (Kafka's DescribeProducers).
    Producers = 26,
    /// A partition's log start moved up: the records below it are gone (Kafka's DeleteRecords).
    DeleteRecords = 27,
    /// Dynamic broker settings changed or described (Kafka's IncrementalAlterConfigs and
    /// DescribeConfigs of a broker resource, KIP-226).
    BrokerConfig = 28,
}

impl Api {
    pub fn from_u8(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Produce,
            2 => Self::Fetch,
            3 => Self::ListOffsets,
            4 => Self::Metadata,
            5 => Self::CreateTopic,
            6 => Self::DeleteTopic,
            7 => Self::ListGroups,
            8 => Self::DescribeGroup,
            9 => Self::JoinGroup,
            10 => Self::SyncGroup,
            11 => Self::Heartbeat,
            12 => Self::LeaveGroup,
            13 => Self::CommitOffsets,
            14 => Self::FetchOffsets,
            15 => Self::DeleteGroup,
            16 => Self::VoterMessages,
            17 => Self::ControllerRequest,
            18 => Self::ClusterStatus,
            19 => Self::MetadataFetch,
            20 => Self::FindCoordinator,
            21 => Self::ReplicaFetch,
            22 => Self::Reassign,
            23 => Self::AlterTopicConfig,
            24 => Self::DeleteOffsets,
            25 => Self::LogDirs,
            26 => Self::Producers,
            27 => Self::DeleteRecords,
            28 => Self::BrokerConfig,
            _ => return None,
        })
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct FrameHeader {
    pub magic: U32,
    pub version: u8,
    pub api: u8,
    pub flags: U16,
    pub request_id: U64,
    pub meta_len: U32,
    pub data_len: U32,
    pub data_crc: U32,
    pub header_crc: U32,
}

/// Why a frame header is refused. All of these end the connection: after a bad header the
/// stream cannot be re-synchronised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    BadMagic { found: u32 },
    BadHeaderChecksum { stored: u32, computed: u32 },
    UnsupportedVersion { found: u8 },
    MetaTooLarge { len: u32, max: u32 },
    DataTooLarge { len: u32, max: u32 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadMagic { found } => write!(f, "bad frame magic {found:#010x}"),
            Self::BadHeaderChecksum { stored, computed } => write!(
                f,
                "frame header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            Self::UnsupportedVersion { found } => {
                write!(
                    f,
                    "unsupported protocol version {found} (this broker speaks {PROTOCOL_VERSION})"
                )
            }
            Self::MetaTooLarge { len, max } => write!(f, "meta of {len} bytes exceeds {max}"),
            Self::DataTooLarge { len, max } => {
                write!(f, "frame data of {len} bytes exceeds socket.request.max.bytes {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameHeader {
    pub fn new(
        api: u8,
        flags: u16,
        request_id: u64,
        meta_len: usize,
        data_len: usize,
        data_crc: u32,
    ) -> Self {
        let mut header = Self {
            magic: FRAME_MAGIC.into(),
            version: PROTOCOL_VERSION,
            api,
            flags: flags.into(),
            request_id: request_id.into(),
            meta_len: (meta_len as u32).into(),
            data_len: (data_len as u32).into(),
            data_crc: data_crc.into(),
            header_crc: 0.into(),
        };
        header.header_crc = crc32fast::hash(&header.as_bytes()[..28]).into();
        header
    }

    /// Parses and checks a header; `data_max` bounds the data length.
    pub fn parse(bytes: &[u8; FRAME_HEADER_BYTES], data_max: u32) -> Result<Self, FrameError> {
        // A 32-byte array always holds a header: every bit pattern is a valid FrameHeader.
        let header = Self::read_from_bytes(bytes).expect("32 bytes make a frame header");
        if header.magic.get() != FRAME_MAGIC {
            return Err(FrameError::BadMagic { found: header.magic.get() });
        }
        let computed = crc32fast::hash(&bytes[..28]);
        if computed != header.header_crc.get() {
            return Err(FrameError::BadHeaderChecksum {
                stored: header.header_crc.get(),
                computed,
            });
        }
        if header.version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { found: header.version });
        }
        let meta_len = header.meta_len.get();
        if meta_len > META_BYTES_MAX {
            return Err(FrameError::MetaTooLarge { len: meta_len, max: META_BYTES_MAX });
        }
        let data_len = header.data_len.get();
        if data_len > data_max {
            return Err(FrameError::DataTooLarge { len: data_len, max: data_max });
        }
        Ok(header)
    }

    /// The meta plus its padding: where the data starts within the body.
    pub fn padded_meta_len(&self) -> usize {
        (self.meta_len.get() as usize).next_multiple_of(META_ALIGN)
    }

    pub fn body_len(&self) -> usize {
        self.padded_meta_len() + self.data_len.get() as usize
    }

    pub fn is_response(&self) -> bool {
        self.flags.get() & FLAG_RESPONSE != 0
    }

    pub fn is_error(&self) -> bool {
        self.flags.get() & FLAG_ERROR != 0
    }
}

/// The meta bytes padded to [`META_ALIGN`].
pub fn pad_meta(meta: &[u8]) -> Vec<u8> {
    let mut padded = Vec::with_capacity(meta.len().next_multiple_of(META_ALIGN));
    padded.extend_from_slice(meta);
    padded.resize(meta.len().next_multiple_of(META_ALIGN), 0);
    padded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(header: FrameHeader) -> [u8; FRAME_HEADER_BYTES] {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        out.copy_from_slice(header.as_bytes());
        out
    }

    #[test]
    fn headers_round_trip() {
        let header = FrameHeader::new(Api::Fetch as u8, FLAG_RESPONSE, 99, 40, 1000, 7);
        let parsed = FrameHeader::parse(&bytes_of(header), 4096).unwrap();
        assert_eq!(parsed.request_id.get(), 99);
        assert_eq!(parsed.padded_meta_len(), 48);
        assert_eq!(parsed.body_len(), 1048);
        assert!(parsed.is_response());
        assert!(!parsed.is_error());
    }

    #[test]
    fn bad_headers_are_refused_with_their_reason() {
        let good = bytes_of(FrameHeader::new(1, 0, 1, 16, 10, 0));
        let mut flipped = good;
        flipped[20] ^= 0x80;
        assert!(matches!(
            FrameHeader::parse(&flipped, 1 << 20),
            Err(FrameError::BadHeaderChecksum { .. })
        ));
        assert!(matches!(
            FrameHeader::parse(&[0xff; 32], 1 << 20),
            Err(FrameError::BadMagic { .. })
        ));
        let huge = bytes_of(FrameHeader::new(1, 0, 1, 16, u32::MAX as usize, 0));
        assert!(matches!(FrameHeader::parse(&huge, 1 << 20), Err(FrameError::DataTooLarge { .. })));
        let big_meta = bytes_of(FrameHeader::new(1, 0, 1, 2 << 20, 0, 0));
        assert!(matches!(
            FrameHeader::parse(&big_meta, 1 << 20),
            Err(FrameError::MetaTooLarge { .. })
        ));
    }
}
