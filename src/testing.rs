//! Helpers for the crate's seeded tests: a small deterministic generator, and the seeds a test
//! runs (`SPATE_TEST_SEED=<n>` replays one, as the integration tests' fault loops do).

/// xorshift64: deterministic from its seed, good enough to pick test operations.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        // Spread small seeds over the state; xorshift must never hold zero.
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The seeds a seeded test runs: the one in `SPATE_TEST_SEED` if set, else `1..=count`.
pub fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("SPATE_TEST_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (1..=count).collect(),
    }
}

/// Fails unless every event in `expected` happened in some seed: a simulation that never
/// reaches a case checks nothing about it.
pub fn assert_every_event_ran(
    totals: &std::collections::BTreeMap<&'static str, u64>,
    expected: &[&str],
) {
    let missing: Vec<_> = expected.iter().filter(|e| !totals.contains_key(*e)).collect();
    assert!(missing.is_empty(), "never ran: {missing:?} ({totals:?})");
}

/// Runs a seeded simulation over `count` seeds, or over the number in the environment variable
/// `more` (its long form), or over the one seed in `SPATE_TEST_SEED`; adds up the counts each
/// seed reports, prints them under `name`, and returns them.
pub fn run_seeds(
    name: &str,
    more: &str,
    count: u64,
    mut run: impl FnMut(u64) -> std::collections::BTreeMap<&'static str, u64>,
) -> std::collections::BTreeMap<&'static str, u64> {
    let count = std::env::var(more).ok().and_then(|s| s.parse().ok()).unwrap_or(count);
    let mut totals = std::collections::BTreeMap::new();
    let seeds = seeds(count);
    let count = seeds.len();
    for seed in seeds {
        for (event, n) in run(seed) {
            *totals.entry(event).or_default() += n;
        }
    }
    println!("{name}: {count} seeds, {totals:?}");
    totals
}
