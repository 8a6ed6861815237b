//! Fuzzes the micro-VM hypercall decoder: every byte of a vCPU mailbox comes from the guest, so
//! `sandcell_abi::decode` must never panic and must never hand the host a buffer whose end
//! overflows or whose length is over its cap. The checks live in `sandcell_abi::fuzz_decode`
//! (shared with a randomized unit test that runs on stable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sandcell_abi::fuzz_decode(data));
