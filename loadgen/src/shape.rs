//! What the generated records look like: value sizes (`--record-size 1024` or `100-1000`) and
//! keys (`--keys none`, `random`, or a number of distinct keys), placed with Kafka's murmur2
//! partitioner as a keyed Kafka producer would place them.

use spate::client::partitioner::partition_for_key;

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
            KeySource::Random { partition, partitions } => loop {
                // About `partitions` tries on average: fine next to archiving the record.
                let key: Vec<u8> = (0..2).flat_map(|_| rng.next().to_le_bytes()).collect();
                if partition_for_key(&key, *partitions) == *partition {
                    return Some(key);
                }
            },
        }
    }
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
        let used = (0..64)
            .filter(|p| KeySource::for_partition(Keys::Distinct(1), *p, 64).has_keys())
            .count();
        assert_eq!(used, 1, "one key fills one partition");
    }
}
