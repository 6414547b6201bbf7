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
