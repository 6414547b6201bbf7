//! An index file as a segment opens it; a bad one must be refused (and rebuilt), never trusted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((index, _)) = spate::log::index::decode(data, 0) {
        let _ = index.seek_offset(u64::from(data.len() as u32));
        let _ = index.seek_timestamp(0);
    }
});
