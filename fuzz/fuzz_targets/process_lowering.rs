//! See `sandcell::__private::fuzz::process_lowering` (src/fuzz.rs) for what this target checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandcell::__private::fuzz::process_lowering(data));
