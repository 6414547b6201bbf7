//! Microbenchmarks of the hot paths: what every produced and fetched byte goes through.
//! Run with `cargo bench --bench hot_paths`.

use std::time::Duration;

use bytes::Bytes;
use divan::counter::{BytesCount, ItemsCount};
use divan::Bencher;
use spate::log::index::SegmentIndex;
use spate::log::tail_cache::{TailBudget, TailCache};
use spate::metrics::{Hist, Metrics};
use spate::record::batch::{validate_native_payload, BatchBuilder};
use spate::record::entry::{entry_len, parse_entry};
use spate::record::{BatchMeta, EntryHeader, OwnedRecord, PayloadFormat};
use spate::types::{FilePosition, LeaderEpoch, Offset};
use zerocopy::IntoBytes;

fn main() {
    divan::main();
}

/// 256 records of 1 KiB: the loadgen's default batch.
fn batch() -> (BatchMeta, rkyv::util::AlignedVec) {
    let mut builder = BatchBuilder::default();
    for i in 0..256u32 {
        builder.push(OwnedRecord {
            key: Some(i.to_le_bytes().to_vec()),
            value: Some(vec![i as u8; 1024]),
            headers: Vec::new(),
            timestamp: 1_700_000_000_000 + i64::from(i),
        });
    }
    builder.build()
}

fn entry_of(meta: &BatchMeta, payload: &[u8]) -> Vec<u8> {
    let header = EntryHeader::new(
        PayloadFormat::Native,
        Offset(0),
        LeaderEpoch(0),
        meta,
        payload.len() as u32,
        crc32fast::hash(payload),
    );
    let mut entry = header.as_bytes().to_vec();
    entry.extend_from_slice(payload);
    entry.resize(entry_len(payload.len()), 0);
    entry
}

#[divan::bench]
fn crc32_of_a_batch(bencher: Bencher) {
    let (_, payload) = batch();
    bencher
        .counter(BytesCount::new(payload.len()))
        .bench(|| crc32fast::hash(divan::black_box(&payload)));
}

#[divan::bench]
fn entry_header_encode(bencher: Bencher) {
    let (meta, _) = batch();
    bencher.bench(|| {
        EntryHeader::new(
            PayloadFormat::Native,
            divan::black_box(Offset(42)),
            LeaderEpoch(0),
            &meta,
            270_000,
            0x1234_5678,
        )
    });
}

#[divan::bench]
fn entry_parse_and_verify(bencher: Bencher) {
    let (meta, payload) = batch();
    let entry = entry_of(&meta, &payload);
    bencher
        .counter(BytesCount::new(entry.len()))
        .bench(|| parse_entry(divan::black_box(&entry)).is_ok());
}

#[divan::bench]
fn rkyv_archive_a_batch(bencher: Bencher) {
    bencher
        .counter(ItemsCount::new(256usize))
        .with_inputs(|| {
            let mut builder = BatchBuilder::default();
            for i in 0..256u32 {
                builder.push(OwnedRecord {
                    value: Some(vec![i as u8; 1024]),
                    timestamp: 1,
                    ..OwnedRecord::default()
                });
            }
            builder
        })
        .bench_values(|builder| builder.build());
}

#[divan::bench]
fn rkyv_validate_a_batch(bencher: Bencher) {
    let (meta, payload) = batch();
    bencher
        .counter(ItemsCount::new(256usize))
        .bench(|| validate_native_payload(divan::black_box(&payload), &meta).is_ok());
}

#[divan::bench]
fn index_lookup_in_a_full_segment(bencher: Bencher) {
    // A 1 GiB segment of 4 KiB entries: one point each, 262,144 points.
    let mut index = SegmentIndex::default();
    for i in 0..262_144u64 {
        index.observe(Offset(i * 4), FilePosition(i * 4096), i as i64);
    }
    let mut probe = 0u64;
    bencher.bench_local(|| {
        probe = (probe + 7_919) % 1_048_576;
        index.seek_offset(divan::black_box(Offset(probe)))
    });
}

#[divan::bench]
fn tail_cache_hit(bencher: Bencher) {
    let cache = TailCache::new(8 << 20, TailBudget::new(8 << 20));
    for i in 0..2048u64 {
        let (base, next) = (Offset(i * 256), Offset((i + 1) * 256));
        TailCache::push(&cache, base, next, Bytes::from(vec![0u8; 4096]), 4096);
    }
    let cache = cache.borrow();
    let mut probe = 0u64;
    bencher.counter(BytesCount::new(1usize << 20)).bench_local(|| {
        probe = (probe + 997) % (2048 * 256);
        cache.read(divan::black_box(Offset(probe)), Offset(2048 * 256), 1 << 20)
    });
}

/// Appending to one of many partitions' caches once the shard's budget is full: every push
/// evicts the shard's oldest entry from another partition.
#[divan::bench]
fn tail_cache_push_at_the_shard_budget(bencher: Bencher) {
    let budget = TailBudget::new(64 << 20);
    let caches: Vec<_> = (0..1000).map(|_| TailCache::new(8 << 20, budget.clone())).collect();
    let mut next = vec![Offset(0); caches.len()];
    let entry = Bytes::from(vec![0u8; 4096]);
    let mut pick = 0usize;
    bencher.counter(BytesCount::new(4096usize)).bench_local(|| {
        pick = (pick + 7) % caches.len();
        let base = next[pick];
        next[pick] = base.plus(1);
        TailCache::push(&caches[pick], base, next[pick], entry.clone(), 4096);
    });
}

/// The loadgen's default batch as a Kafka producer would send it (uncompressed RecordBatch v2).
fn kafka_batch() -> bytes::BytesMut {
    let (meta, payload) = batch();
    let entry = entry_of(&meta, &payload);
    let (header, payload) = parse_entry(&entry).expect("a valid entry");
    let mut kafka = bytes::BytesMut::new();
    spate::record::convert::native_to_kafka(&header, payload, &mut kafka).expect("convertible");
    kafka
}

#[divan::bench]
fn kafka_batch_validate_crc32c(bencher: Bencher) {
    let kafka = kafka_batch();
    bencher.counter(BytesCount::new(kafka.len())).bench(|| {
        spate::record::kafka_batch::validate_produced(divan::black_box(&kafka), u32::MAX).is_ok()
    });
}

#[divan::bench]
fn kafka_batch_to_pending_entry(bencher: Bencher) {
    let kafka = kafka_batch();
    let meta =
        spate::record::kafka_batch::validate_produced(&kafka, u32::MAX).expect("valid").meta();
    bencher.counter(BytesCount::new(kafka.len())).bench(|| {
        spate::record::PendingEntry::kafka(divan::black_box(&kafka), meta)
            .map(|p| p.seal(Offset(7), LeaderEpoch(0)))
    });
}

#[divan::bench]
fn convert_native_entry_to_kafka(bencher: Bencher) {
    let (meta, payload) = batch();
    let entry = entry_of(&meta, &payload);
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&entry);
    let (header, payload) = parse_entry(&aligned).expect("a valid entry");
    bencher.counter(ItemsCount::new(256usize)).bench(|| {
        let mut out = bytes::BytesMut::with_capacity(300_000);
        spate::record::convert::native_to_kafka(&header, divan::black_box(payload), &mut out)
            .map(|()| out.len())
    });
}

#[divan::bench]
fn convert_kafka_batch_to_native_entry(bencher: Bencher) {
    let kafka = kafka_batch();
    let meta =
        spate::record::kafka_batch::validate_produced(&kafka, u32::MAX).expect("valid").meta();
    let (base, epoch) = (Offset(0), LeaderEpoch(0));
    let header = EntryHeader::new(PayloadFormat::Kafka, base, epoch, &meta, kafka.len() as u32, 0);
    bencher.counter(ItemsCount::new(256usize)).bench(|| {
        spate::record::convert::kafka_to_native(&header, divan::black_box(&kafka)).map(|e| e.len())
    });
}

/// What each produce request adds for `/metrics`: its latency into both histograms, its API
/// and error codes, and its topic's traffic (one lookup by name among 100 topics).
#[divan::bench]
fn metrics_of_one_produce_request(bencher: Bencher) {
    let metrics = Metrics::default();
    let topics: Vec<String> = (0..100).map(|t| format!("topic-{t}")).collect();
    for topic in &topics {
        metrics.produced(topic, 1, 1);
    }
    let mut n = 0usize;
    bencher.bench_local(|| {
        n = (n + 37) % topics.len();
        metrics.record(Hist::KafkaProduce, Duration::from_micros(divan::black_box(n as u64 * 13)));
        metrics.count_kafka_request(0, []);
        metrics.produced(divan::black_box(&topics[n]), 262_144, 256);
    });
}
