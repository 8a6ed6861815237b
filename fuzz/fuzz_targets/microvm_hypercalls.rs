//! See `sandcell::__private::fuzz::microvm_hypercalls` (src/fuzz.rs) for what this target checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandcell::__private::fuzz::microvm_hypercalls(data));
