//! What the generated records look like: value sizes (`--record-size 1024` or `100-1000`) and
//! keys (`--keys none`, `random`, or a number of distinct keys), placed with Kafka's murmur2
//! partitioner as a keyed Kafka producer would place them.

use spate::client::partitioner::{murmur2_mix, partition_for_key, MURMUR2_M, MURMUR2_SEED};

/// Value sizes: fixed, or uniform over an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRange {
    pub min: usize,
    pub max: usize,
}

impl SizeRange {
    pub fn mean(&self) -> usize {
        (self.min + self.max) / 2
    }

    pub fn pick(&self, rng: &mut Rng) -> usize {
        self.min + (rng.next() % (self.max - self.min + 1) as u64) as usize
    }
}

impl std::fmt::Display for SizeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.min == self.max {
            true => write!(f, "{}", self.min),
            false => write!(f, "{}-{}", self.min, self.max),
        }
    }
}

impl std::str::FromStr for SizeRange {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("record size must be N or MIN-MAX bytes, not {text:?}");
        let (min, max) = match text.split_once('-') {
            Some((min, max)) => {
                (min.trim().parse().map_err(|_| bad())?, max.trim().parse().map_err(|_| bad())?)
            }
            None => {
                let size = text.trim().parse().map_err(|_| bad())?;
                (size, size)
            }
        };
        if min == 0 || min > max {
            return Err(bad());
        }
        Ok(Self { min, max })
    }
}

/// Record keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    None,
    /// 16 random bytes per record.
    Random,
    /// `key-0` .. `key-(N-1)`.
    Distinct(u32),
}

impl std::str::FromStr for Keys {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Keys::None),
            "random" => Ok(Keys::Random),
            n => match n.parse::<u32>() {
                Ok(count) if count > 0 => Ok(Keys::Distinct(count)),
                _ => Err(format!("keys must be none, random or a positive count, not {text:?}")),
            },
        }
    }
}

/// The keys one partition's records carry: only keys the partitioner sends to that partition.
#[derive(Clone, Debug)]
pub enum KeySource {
    None,
    Random { partition: u32, partitions: u32 },
    Pool(Vec<Vec<u8>>),
}

impl KeySource {
    pub fn for_partition(keys: Keys, partition: u32, partitions: u32) -> Self {
        match keys {
            Keys::None => KeySource::None,
            Keys::Random => KeySource::Random { partition, partitions },
            Keys::Distinct(count) => KeySource::Pool(
                (0..count)
                    .map(|i| format!("key-{i}").into_bytes())
                    .filter(|key| partition_for_key(key, partitions) == partition)
                    .collect(),
            ),
        }
    }

    /// False when no key of the set lands in this partition: it then gets no records at all.
    pub fn has_keys(&self) -> bool {
        !matches!(self, KeySource::Pool(pool) if pool.is_empty())
    }

    pub fn pick(&self, rng: &mut Rng) -> Option<Vec<u8>> {
        match self {
            KeySource::None => None,
            KeySource::Pool(pool) => Some(pool[(rng.next() % pool.len() as u64) as usize].clone()),
            KeySource::Random { partition, partitions } => {
                Some(random_key_for(*partition, *partitions, rng).to_vec())
            }
        }
    }
}

/// A random 16-byte key that Kafka's murmur2 partitioner sends to `partition`, found in constant
/// time: the first 12 bytes are random, a random hash that lands in `partition` is chosen, and the
/// last 4 bytes are solved for by running murmur2's steps backwards (each is a multiplication by
/// an odd constant or an xor-shift, so each can be undone). Trying random keys until one lands
/// costs about `partitions` hashes per record, too many at 1,000 partitions and more.
fn random_key_for(partition: u32, partitions: u32, rng: &mut Rng) -> [u8; 16] {
    const M: u32 = MURMUR2_M;
    // M's inverse modulo 2^32 (M is odd, so it has one).
    const M_INVERSE: u32 = {
        let mut inverse: u32 = 1;
        let mut i = 0;
        while i < 5 {
            // Newton's iteration doubles the correct low bits each step: 1 → 32 bits in 5.
            inverse = inverse.wrapping_mul(2u32.wrapping_sub(M.wrapping_mul(inverse)));
            i += 1;
        }
        inverse
    };
    let unmix = |k: u32| {
        let k = k.wrapping_mul(M_INVERSE);
        (k ^ (k >> 24)).wrapping_mul(M_INVERSE)
    };
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&rng.next().to_le_bytes());
    key[8..12].copy_from_slice(&rng.next().to_le_bytes()[..4]);
    let mut h = MURMUR2_SEED ^ 16;
    for chunk in key[..12].chunks_exact(4) {
        let k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        h = h.wrapping_mul(M) ^ murmur2_mix(k);
    }
    // A final hash whose low 31 bits are `partition` modulo `partitions`, top bit random.
    let draw = rng.next();
    let multiples = (0x7fff_ffff - partition) / partitions + 1;
    let low31 = partition + ((draw >> 1) % u64::from(multiples)) as u32 * partitions;
    let mut wanted = low31 | (((draw & 1) as u32) << 31);
    // Undo murmur2's final avalanche: h ^= h >> 13; h *= M; h ^= h >> 15.
    wanted ^= (wanted >> 15) ^ (wanted >> 30);
    wanted = wanted.wrapping_mul(M_INVERSE);
    wanted ^= (wanted >> 13) ^ (wanted >> 26);
    // The last word's step was h = h * M ^ mix(k): solve for k.
    let last = unmix(wanted ^ h.wrapping_mul(M));
    key[12..].copy_from_slice(&last.to_le_bytes());
    key
}

/// xorshift64: fast, deterministic per seed, good enough for sizes and keys.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_stay_in_range() {
        let range: SizeRange = "100-200".parse().unwrap();
        let mut rng = Rng::new(1);
        assert!((0..1000).map(|_| range.pick(&mut rng)).all(|s| (100..=200).contains(&s)));
        assert_eq!("64".parse::<SizeRange>().unwrap(), SizeRange { min: 64, max: 64 });
        assert!("200-100".parse::<SizeRange>().is_err());
        assert!("0".parse::<SizeRange>().is_err());
    }

    #[test]
    fn keys_land_where_kafka_would_put_them() {
        let mut rng = Rng::new(7);
        for partition in 0..4 {
            for keys in [Keys::Random, Keys::Distinct(50)] {
                let source = KeySource::for_partition(keys, partition, 4);
                assert!(source.has_keys());
                let key = source.pick(&mut rng).unwrap();
                assert_eq!(partition_for_key(&key, 4), partition);
            }
        }
        for partitions in [1, 7, 1000, 10_000, 0x7fff_ffff] {
            for partition in [0, partitions / 2, partitions - 1] {
                let key = random_key_for(partition, partitions, &mut rng);
                assert_eq!(
                    partition_for_key(&key, partitions),
                    partition,
                    "{partition} of {partitions}"
                );
            }
        }
        let used = (0..64)
            .filter(|p| KeySource::for_partition(Keys::Distinct(1), *p, 64).has_keys())
            .count();
        assert_eq!(used, 1, "one key fills one partition");
    }
}
