//! Sequences of C ABI calls with live, freed, NULL and made-up handles; see `sandcell-ffi`'s
//! `fuzz` module (ffi/src/fuzz.rs) for what this target checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandcell_capi::fuzz::c_abi(data));
