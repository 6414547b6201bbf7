//! Segment bytes as recovery reads them: the scanner, and entry parsing as readers do it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate::log::scan::{scan, ScanState};
use spate::record::entry::parse_entry;

fuzz_target!(|data: &[u8]| {
    let mut state = ScanState::new(0);
    let _ = scan(data, &mut state);
    let _ = parse_entry(data);
});
