//! rkyv archives of owned values: how native protocol bodies and the cluster's metadata
//! entries are written, and read back (validated) from untrusted bytes.

use rkyv::{rancor, Archive};

/// Archives a value. Serializing owned values into memory cannot fail.
pub fn encode<T>(value: &T) -> rkyv::util::AlignedVec
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rancor::Error>(value).expect("archiving a value in memory")
}

/// Validates and deserializes a value from untrusted bytes (aligned as the archive needs).
pub fn decode<T>(bytes: &[u8]) -> Result<T, String>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    rkyv::from_bytes::<T, rancor::Error>(bytes).map_err(|e| e.to_string())
}

/// A version byte, then the value's archive: how stored formats that must outlive a build are
/// written (each names its own version).
pub fn encode_versioned<T>(version: u8, value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    let archived = encode(value);
    let mut bytes = Vec::with_capacity(1 + archived.len());
    bytes.push(version);
    bytes.extend_from_slice(&archived);
    bytes
}

/// Reads what [`encode_versioned`] wrote, at any alignment. `versions` are those this build
/// reads, all in `T`'s layout (a later one only adds what an earlier one never held); any other
/// is refused by number (a newer build wrote it), never taken for damage.
pub fn decode_versioned<T>(
    bytes: &[u8],
    versions: std::ops::RangeInclusive<u8>,
    what: &str,
) -> Result<T, String>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let Some((&found, archived)) = bytes.split_first() else {
        return Err(format!("an empty {what}"));
    };
    if !versions.contains(&found) {
        let (oldest, newest) = (versions.start(), versions.end());
        let reads = match oldest == newest {
            true => format!("{newest}"),
            false => format!("{oldest} to {newest}"),
        };
        return Err(format!("{what} version {found}: this build reads {reads}"));
    }
    // The archive needs its alignment, which bytes read from a log entry or a file do not
    // promise (after the version byte, they are rarely aligned).
    decode(&aligned(archived)).map_err(|e| format!("{what}: {e}"))
}

/// Bytes as an archive needs them, 16-aligned: borrowed when they already are (as log reads and
/// frame bodies hand them out), copied into an aligned buffer otherwise.
pub enum Aligned<'a> {
    Borrowed(&'a [u8]),
    Copied(rkyv::util::AlignedVec<16>),
}

impl std::ops::Deref for Aligned<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Borrowed(bytes) => bytes,
            Self::Copied(copy) => copy,
        }
    }
}

pub fn aligned(bytes: &[u8]) -> Aligned<'_> {
    if (bytes.as_ptr() as usize).is_multiple_of(16) {
        return Aligned::Borrowed(bytes);
    }
    let mut copy = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    copy.extend_from_slice(bytes);
    Aligned::Copied(copy)
}
