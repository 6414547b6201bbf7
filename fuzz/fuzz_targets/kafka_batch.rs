//! A produced Kafka batch whose records section is the fuzzer's, behind a header the target
//! makes valid (lengths, counts and CRC-32C), so every input gets past validation: the broker
//! then stores it as an entry and converts it for a native reader, decompressing with whichever
//! codec the first byte picks. Random bytes almost never carry a matching CRC, so without this
//! target the decompressors and the record walk behind them see only well-formed input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate::record::kafka_batch::{seal_crc, validate_produced, BATCH_HEADER_BYTES};
use spate::record::convert::native_entries;
use spate::record::PendingEntry;

/// Batch length counts from after the base offset and the length field itself.
const LENGTH_COUNTED_FROM: usize = 12;

fuzz_target!(|data: &[u8]| {
    let [codec, count, records @ ..] = data else { return };
    let count = i32::from(*count).max(1);
    let mut batch = vec![0u8; BATCH_HEADER_BYTES];
    let length = (BATCH_HEADER_BYTES - LENGTH_COUNTED_FROM + records.len()) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    batch[16] = 2; // magic
    batch[21..23].copy_from_slice(&i16::from(codec % 5).to_be_bytes());
    batch[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    batch[43..51].copy_from_slice(&(-1i64).to_be_bytes()); // no producer id
    batch[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    batch[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    batch[57..61].copy_from_slice(&count.to_be_bytes());
    batch.extend_from_slice(records);
    seal_crc(&mut batch);
    let Ok(header) = validate_produced(&batch, u32::MAX) else { return };
    let Some(pending) = PendingEntry::kafka(&batch, header.meta()) else { return };
    let (entry, _) = pending.seal(0);
    let _ = native_entries(vec![entry]);
});
