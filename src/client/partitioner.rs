//! Kafka's default partitioner for keyed records, so Spate's clients and Kafka's agree on where
//! a key lands: `toPositive(murmur2(key)) % partitions`.

/// murmur2's seed, as Kafka uses it.
pub const MURMUR2_SEED: u32 = 0x9747_b28c;
/// murmur2's multiplier.
pub const MURMUR2_M: u32 = 0x5bd1_e995;

/// murmur2's mixing of one 4-byte word of the key, before it is folded into the hash.
pub fn murmur2_mix(word: u32) -> u32 {
    let k = word.wrapping_mul(MURMUR2_M);
    (k ^ (k >> 24)).wrapping_mul(MURMUR2_M)
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed 0x9747b28c.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = MURMUR2_M;
    let length = data.len() as u32;
    let mut h = MURMUR2_SEED ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        h = h.wrapping_mul(M) ^ murmur2_mix(k);
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    positive % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafka() {
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn keys_land_in_range() {
        for key in 0..1000u32 {
            assert!(partition_for_key(&key.to_le_bytes(), 7) < 7);
        }
    }
}
